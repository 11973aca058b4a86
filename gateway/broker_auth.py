"""amqtt plugins that enforce the device registry: passwords and client ids at CONNECT, topic
ACLs after.

Both plugins read the same registry file and notice when `trackside devices ...` changes it
(at the next CONNECT, and within a second for connected clients), so adding or revoking a
device needs no broker restart.

A CONNECT is checked as soon as the broker has read it, before the broker touches any session:
amqtt 0.12.1 acts on the CONNECT's client id before it asks the auth plugins. A clean-session
CONNECT deletes the existing session of that id (its subscriptions: the bridge goes silent), a
persistent one overwrites that session's credentials and takes over its connection, and both
happen even when authentication then fails (measured: a client with a wrong password and the
client id `trackside-bridge` left the bridge connected but receiving nothing). So
`RegistryAuthPlugin` wraps `BrokerProtocolHandler.init_from_connect` and refuses there, with a
CONNACK, the way amqtt itself refuses a malformed CONNECT.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from amqtt.contexts import Action
from amqtt.errors import MQTTError
from amqtt.mqtt.connack import IDENTIFIER_REJECTED, NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from gateway.registry import Registry

__all__ = ["RegistryAuthPlugin", "RegistryTopicPlugin", "current_registry", "refusal"]

log = logging.getLogger(__name__)


RECHECK_S = 1.0  # how often the file is looked at: the topic check runs for every message


@cache
def _registry(path: str) -> Registry:
    return Registry(Path(path))


_checked_at: dict[str, float] = {}


def current_registry(path: str, always: bool = False) -> Registry:
    """The registry, re-read if the file changed; the file is looked at on every CONNECT
    (`always`) and otherwise at most once per RECHECK_S."""
    registry = _registry(path)
    now = time.monotonic()
    if always or now - _checked_at.get(path, -RECHECK_S) >= RECHECK_S:
        _checked_at[path] = now
        registry.reload_if_changed()
    return registry


def refusal(registry: Registry, session: Session) -> int | None:
    """None if the CONNECT in `session` may go ahead; else the CONNACK return code to refuse it
    with, after logging one line that names the account (never the password)."""
    account = registry.authenticate(session.username, session.password)
    if account is None:
        log.warning(
            "refused MQTT login for %r (unknown, revoked or wrong password)", session.username
        )
        return int(NOT_AUTHORIZED)
    if not account.may_use_client_id(session.client_id):
        log.warning(
            "refused MQTT client id %r for account %r: a device connects only as %s; "
            "the session of that id was left alone",
            session.client_id,
            account.username,
            " or ".join(account.client_ids() or ()),
        )
        return int(IDENTIFIER_REJECTED)
    return None


class RegistryAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """Admit a client only with a registered, unrevoked username, its password, and a client
    id that account may use."""

    @dataclass
    class Config:
        """`registry`: path of the device registry YAML file."""

        registry: str = "devices.yaml"

    async def authenticate(self, *, session: Session) -> bool | None:
        """True for a valid account and client id; False otherwise.

        The same check already ran when the CONNECT was read (`_checked_init_from_connect`);
        this one keeps the plugin correct on its own.
        """
        return refusal(current_registry(self.config.registry, always=True), session) is None


_init_from_connect = BrokerProtocolHandler.__dict__["init_from_connect"].__func__


async def _checked_init_from_connect(
    cls: type[BrokerProtocolHandler],
    reader: Any,
    writer: Any,
    plugins_manager: Any,
    loop: Any = None,
) -> tuple[BrokerProtocolHandler, Session]:
    """amqtt's CONNECT reader, then the registry check of a broker that has RegistryAuthPlugin."""
    handler, session = await _init_from_connect(cls, reader, writer, plugins_manager, loop)
    plugin = next((p for p in plugins_manager.plugins if isinstance(p, RegistryAuthPlugin)), None)
    if plugin is None:
        return handler, session
    code = refusal(current_registry(plugin.config.registry, always=True), session)
    if code is not None:
        await ConnackPacket.build(0, code).to_stream(writer)
        await writer.close()
        raise MQTTError(f"refused CONNECT of {session.username!r} as {session.client_id!r}")
    return handler, session


if not getattr(BrokerProtocolHandler.init_from_connect, "trackside_checked", False):
    _checked_init_from_connect.trackside_checked = True  # type: ignore[attr-defined]
    BrokerProtocolHandler.init_from_connect = classmethod(_checked_init_from_connect)


class RegistryTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """Let each account publish and subscribe only where its registry rules allow."""

    @dataclass
    class Config:
        """`registry`: path of the device registry YAML file."""

        registry: str = "devices.yaml"

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool | None:
        """True if the session's account may do `action` on `topic`."""
        if session is None or topic is None:
            return False
        account = current_registry(self.config.registry).accounts.get(session.username or "")
        if account is None:
            return False
        allowed = account.may("write" if action == Action.PUBLISH else "read", topic)
        if not allowed and action != Action.RECEIVE:
            log.warning("refused %s on %r for %r", action, topic, session.username)
        return allowed
