"""amqtt plugins that enforce the device registry: passwords at CONNECT, topic ACLs after.

Both plugins read the same registry file and notice when `trackside devices ...` changes it
(at the next CONNECT, and within a second for connected clients), so adding or revoking a
device needs no broker restart.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from gateway.registry import Registry

__all__ = ["RegistryAuthPlugin", "RegistryTopicPlugin"]

log = logging.getLogger(__name__)


RECHECK_S = 1.0  # how often the file is looked at: the topic check runs for every message


@cache
def _registry(path: str) -> Registry:
    return Registry(Path(path))


_checked_at: dict[str, float] = {}


def _current(path: str, always: bool = False) -> Registry:
    """The registry, re-read if the file changed; the file is looked at on every CONNECT
    (`always`) and otherwise at most once per RECHECK_S."""
    registry = _registry(path)
    now = time.monotonic()
    if always or now - _checked_at.get(path, -RECHECK_S) >= RECHECK_S:
        _checked_at[path] = now
        registry.reload_if_changed()
    return registry


class RegistryAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """Admit a client only with a registered, unrevoked username and its password."""

    @dataclass
    class Config:
        """`registry`: path of the device registry YAML file."""

        registry: str = "devices.yaml"

    async def authenticate(self, *, session: Session) -> bool | None:
        """True for a valid account; False otherwise (the password is never logged)."""
        registry = _current(self.config.registry, always=True)
        account = registry.authenticate(session.username, session.password)
        if account is None:
            log.warning("refused MQTT login for %r (unknown, revoked or wrong password)",
                        session.username)
            return False
        return True


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
        account = _current(self.config.registry).accounts.get(session.username or "")
        if account is None:
            return False
        allowed = account.may("write" if action == Action.PUBLISH else "read", topic)
        if not allowed and action != Action.RECEIVE:
            log.warning("refused %s on %r for %r", action, topic, session.username)
        return allowed
