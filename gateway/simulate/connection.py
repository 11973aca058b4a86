"""One MQTT connection of the fast simulator, shared by the devices it carries.

gmqtt publishes about four times faster than paho-mqtt from one asyncio process here
(docs/simulator.md), so the fast mode uses it. PUBACKs are counted through gmqtt's store of
unacknowledged messages. The session is persistent (clean session off) so that a dropped
connection resends what was unacknowledged; `close()` ends the session on the broker.
While the connection is down, messages wait in a backlog and go out in order on reconnect.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv311
from gmqtt.mqtt.handler import MQTTConnectError
from gmqtt.storage import PersistentStorage

from gateway.simulate.fleet import SimulateError

__all__ = ["Connection"]

log = logging.getLogger(__name__)

RECONNECT_DELAY_S = 1


class _AckCounter(PersistentStorage):  # type: ignore[misc]  # gmqtt has no type hints
    """gmqtt's store of unacknowledged publishes, counting the acknowledged readings."""

    def __init__(self) -> None:
        super().__init__()
        self.reading_next = False  # set by the publisher just before a reading goes out
        self.unacked: dict[int, bool] = {}  # mid -> is a reading
        self.acked = 0
        self.lost = 0  # unacknowledged readings the broker's session no longer knew

    def push_message(self, mid: int, raw_package: bytes) -> None:
        self.unacked.setdefault(mid, self.reading_next)
        super().push_message(mid, raw_package)

    def remove_message_by_mid(self, mid: int) -> None:
        if self.unacked.pop(mid, False):
            self.acked += 1
        super().remove_message_by_mid(mid)

    def clear(self) -> None:
        self.lost += sum(self.unacked.values())
        self.unacked.clear()
        super().clear()


class Connection:
    """An MQTT 3.1.1 connection that publishes at QoS 1 and counts acknowledged readings."""

    def __init__(
        self,
        client_id: str,
        user: str | None,
        password: str | None,
        will: tuple[str, bytes] | None,
        on_connect: Callable[[Connection], None],
        on_message: Callable[[str, bytes], None],
    ) -> None:
        self.client_id = client_id
        self._storage = _AckCounter()
        will_message = gmqtt.Message(will[0], will[1], qos=1, retain=True) if will else None
        self._client = gmqtt.Client(
            client_id,
            clean_session=False,
            will_message=will_message,
            persistent_storage=self._storage,
        )
        self._client.set_config({"reconnect_delay": RECONNECT_DELAY_S})
        self._credentials = (user, password)
        if user is not None:
            self._client.set_auth_credentials(user, password)
        self._on_connect = on_connect
        self._on_message = on_message
        self._client.on_connect = self._connected
        self._client.on_message = self._message
        self._client.on_subscribe = self._subscribed
        self._subacks: dict[int, asyncio.Future[None]] = {}
        self.backlog: deque[tuple[str, bytes, bool, bool]] = deque()
        self.published = 0
        self._address: tuple[str, int] | None = None  # once connected

    @property
    def acked(self) -> int:
        """Readings the broker acknowledged."""
        return self._storage.acked

    @property
    def lost(self) -> int:
        """Unacknowledged readings dropped because the broker had lost the session."""
        return self._storage.lost

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged, sent or waiting in the backlog."""
        return len(self._storage.unacked) + len(self.backlog)

    async def connect(self, host: str, port: int) -> None:
        """Connect, or raise SimulateError saying why not."""
        try:
            await self._client.connect(host, port, version=MQTTv311, raise_exc=True)
        except OSError as exc:
            raise SimulateError(
                f"cannot connect to the MQTT broker at {host}:{port}: {exc}; "
                "start one (`trackside broker run`) or pass --broker-host/--broker-port"
            ) from exc
        except MQTTConnectError as exc:
            raise SimulateError(
                f"the MQTT broker at {host}:{port} refused {self.client_id}: {exc}; "
                "check the user name and password (or --credentials)"
            ) from exc
        self._address = (host, port)

    async def subscribe(self, topics: list[str]) -> None:
        """Subscribe at QoS 1 and wait for the broker's SUBACK."""
        for topic in topics:
            mid = self._client.subscribe(topic, qos=1)
            self._subacks[mid] = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self._subacks[mid], 30)

    def send(self, topic: str, payload: bytes, retain: bool = False, reading: bool = False) -> None:
        """Publish at QoS 1 now, or queue behind earlier messages while disconnected."""
        if self.backlog or not self._client.is_connected:
            self.backlog.append((topic, payload, retain, reading))
            return
        self._publish(topic, payload, retain, reading)

    def flush(self) -> None:
        """Send the backlog while connected."""
        while self.backlog and self._client.is_connected:
            self._publish(*self.backlog.popleft())

    async def reconnect(self) -> None:
        """Drop the connection and connect again at once (a reconnect storm)."""
        await self._client.reconnect()

    async def close(self) -> None:
        """Disconnect and end the session on the broker (nothing stays queued for it)."""
        await self._client.disconnect()
        if self._address is None:
            return
        host, port = self._address
        cleaner = gmqtt.Client(self.client_id, clean_session=True)
        user, password = self._credentials
        if user is not None:
            cleaner.set_auth_credentials(user, password)
        await cleaner.connect(host, port, version=MQTTv311)
        await cleaner.disconnect()

    def _publish(self, topic: str, payload: bytes, retain: bool, reading: bool) -> None:
        self._storage.reading_next = reading
        self._client.publish(topic, payload, qos=1, retain=retain)
        self.published += reading

    def _connected(self, client: Any, flags: int, rc: int, properties: Any) -> None:
        self._on_connect(self)
        self.flush()

    def _message(self, client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        self._on_message(topic, payload)
        return 0

    def _subscribed(self, client: Any, mid: int, qos: Any, properties: Any) -> None:
        future = self._subacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)
