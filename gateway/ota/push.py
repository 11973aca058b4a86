"""Deliver a release to one device or a few over their MQTT topics, and follow each to the end.

The protocol (docs/ota.md, "Protocol") fits the topics a device already has and its ACL: the
offer and the chunks go to `trackside/v1/{train}/{device}/cmd`, the device's answers and chunk
requests come back on `.../reply`. The device pulls: it asks for a file and offset, so it
resumes from whatever reached its flash. This side answers each request, offers again when the
device comes online (its retained status) or goes quiet, and waits for the verdict of the new
app's health check: `confirmed`, or `rolled_back` with the reason.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from gateway.ota import OtaError
from gateway.ota.release import Release

__all__ = ["CHUNK_MAGIC", "FINAL", "DeviceUpdate", "Push", "Target"]

log = logging.getLogger(__name__)

CHUNK_MAGIC = b"\x00"  # a chunk's first byte: never the `{` of a JSON command
FINAL = frozenset({"confirmed", "rolled_back", "refused", "abandoned", "failed", "timed_out"})
ONLINE = frozenset({"online", "disabled", "safe"})  # statuses of a device that reads commands


@dataclass(frozen=True)
class Target:
    """One device: its train and id."""

    train_id: str
    device_id: int

    @property
    def base(self) -> str:
        """trackside/v1/{train}/{device}/."""
        return f"trackside/v1/{self.train_id}/{self.device_id}/"


@dataclass
class DeviceUpdate:
    """How the update of one device stands."""

    target: Target
    state: str = "waiting"  # waiting, offered, accepted, fetching, switching, then one of FINAL
    fetched: int = 0  # bytes sent in chunks
    detail: str = ""  # the device's error or rollback reason
    started: float = field(default_factory=time.monotonic)
    last_heard: float = 0.0
    last_offer: float = 0.0
    fetch_started: float | None = None  # the first chunk request
    switched: float | None = None  # the device said it switches slots
    old_app_since: float | None = None  # after the switch, the old app came back online
    ended: float | None = None

    @property
    def ok(self) -> bool:
        """True once the new app passed its health check."""
        return self.state == "confirmed"

    @property
    def seconds(self) -> float:
        """From the start to the verdict (or until now)."""
        return (self.ended or time.monotonic()) - self.started

    @property
    def fetch_seconds(self) -> float | None:
        """From the first chunk request to the switch: the transfer and its hash checks."""
        if self.fetch_started is None or self.switched is None:
            return None
        return self.switched - self.fetch_started


class Push:
    """Push `release` to `targets` through the broker at host:port as a service account."""

    def __init__(
        self,
        release: Release,
        targets: Sequence[Target],
        host: str,
        port: int,
        user: str | None = None,
        password: str | None = None,
        timeout_s: float = 600.0,
        retry_s: float = 10.0,
        rid: str | None = None,
    ) -> None:
        self.release = release
        # A rollout passes its own id, the same after a gateway restart, so a device still
        # fetching takes the repeated offer as a nudge rather than as a new update.
        self.rid = rid or f"ota-{release.version}-{secrets.token_hex(3)}"
        self.updates = {t.base: DeviceUpdate(t) for t in targets}
        self._host, self._port = host, port
        self._timeout_s, self._retry_s = timeout_s, retry_s
        self._names = [name for name, _, _ in release.manifest["files"]]
        # The app is offered only the id (parsing the signed offer would take more heap than
        # it has to spare); the update client it reboots into asks for the signed one.
        self._offer = json.dumps({"id": self.rid, "op": "ota", "version": release.version})
        self._signed = json.dumps(
            {"id": self.rid, "op": "ota", "m": release.manifest_bytes.decode("ascii"),
             "sig": release.signature.hex()},
            separators=(",", ":"),
        )
        self._tag = release.digest[:4]
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"trackside-ota-{secrets.token_hex(4)}"
        )
        if user:
            self._client.username_pw_set(user, password)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message

    def run(
        self, progress: Callable[[list[DeviceUpdate]], None] | None = None
    ) -> list[DeviceUpdate]:
        """Update every target; returns when each has a verdict or timed out."""
        self.start()
        try:
            while True:
                pending = self.step()
                if progress is not None:
                    progress(list(self.updates.values()))
                if not pending:
                    return list(self.updates.values())
                time.sleep(0.1)
        finally:
            self.close()

    def start(self) -> None:
        """Connect to the broker and follow the targets' topics (then `step()` often)."""
        try:
            self._client.connect(self._host, self._port)
        except OSError as exc:
            raise OtaError(
                f"cannot reach the MQTT broker at {self._host}:{self._port} ({exc}): is the "
                "gateway running, and are --host and --port its broker's?"
            ) from exc
        self._client.loop_start()
        if not self._connected.wait(30):
            self.close()
            raise OtaError(f"the broker at {self._host}:{self._port} did not accept us: "
                           "check --user and --password-file (a service account)")

    def add(self, targets: Sequence[Target]) -> None:
        """Start updating `targets` too (each one's timeout counts from now)."""
        with self._lock:
            new = [t for t in targets if t.base not in self.updates]
            self.updates.update({t.base: DeviceUpdate(t) for t in new})
            connected = self._connected.is_set()
        if new and connected:
            self._client.subscribe([(f"{t.base}{leaf}", 1) for t in new
                                    for leaf in ("reply", "status")])

    def step(self) -> int:
        """Offer again and time out where due; the number of targets without a verdict."""
        now = time.monotonic()
        with self._lock:
            pending = [u for u in self.updates.values() if u.state not in FINAL]
            for update in pending:
                self._tick(update, now)
            return sum(u.state not in FINAL for u in pending)

    def close(self) -> None:
        """Leave the broker."""
        self._client.loop_stop()
        self._client.disconnect()

    def _tick(self, update: DeviceUpdate, now: float) -> None:
        if now - update.started > self._timeout_s:
            self._end(update, "timed_out", f"no verdict within {self._timeout_s:.0f} s")
        elif update.state in ("waiting", "offered", "fetching") and now - max(
            update.last_heard, update.last_offer
        ) > self._retry_s:
            self._send_offer(update)  # the device went quiet: a lost message, or it rebooted
        elif update.old_app_since is not None and now - update.old_app_since > self._retry_s:
            update.old_app_since = None
            self._send_offer(update)

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        if reason.is_failure:
            log.warning("the broker refused the OTA push's connection: %s", reason)
            return
        with self._lock:
            topics = [(f"{base}{leaf}", 1) for base in self.updates for leaf in
                      ("reply", "status")]
            self._connected.set()  # under the lock: add() subscribes whatever comes after
        if topics:  # a rollout's push starts empty and adds devices wave by wave
            client.subscribe(topics)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        base, _, leaf = msg.topic.rpartition("/")
        update = self.updates.get(base + "/")
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if update is None or not isinstance(body, dict):
            return
        with self._lock:
            if update.state in FINAL:
                return
            if leaf == "status":
                online = body.get("state") in ONLINE
                if online and update.state in ("waiting", "offered") and (
                    body.get("app") == self.release.version
                ):
                    # Already runs it (a rollout resumed after its gateway restarted, or a
                    # second push): offering again would only install it once more.
                    self._end(update, "confirmed", "already running this release")
                elif online and update.state in ("waiting", "offered"):
                    self._send_offer(update)
                elif update.state == "switching":
                    # The old app after the switch: a rollback, whose verdict follows at once,
                    # or a power loss before the switch took, after which _tick offers again
                    # (the device finds its files complete).
                    old = online and body.get("app") != self.release.version
                    update.old_app_since = time.monotonic() if old else None
            elif body.get("id") in (self.rid, None) and ("ota" in body or body.get("id")):
                update.last_heard = time.monotonic()
                self._reply(update, body)

    def _reply(self, update: DeviceUpdate, body: dict[str, Any]) -> None:
        step = body.get("ota")
        if step is None:  # the app's answer to the offer: it reboots into the update client
            if body.get("ok"):
                update.state = "accepted"
            else:
                self._end(update, "failed", str(body.get("error", "refused the offer")))
        elif step == "ready":
            update.state = "accepted"
            self._client.publish(update.target.base + "cmd", self._signed, qos=1)
        elif step == "get":
            update.state = "fetching"
            if update.fetch_started is None:
                update.fetch_started = time.monotonic()
            self._serve(update, int(body["f"]), int(body["o"]), int(body["n"]))
        elif step == "switching":
            update.state, update.switched = "switching", time.monotonic()
        elif step in FINAL:
            self._end(update, step, str(body.get("why") or body.get("error") or ""))

    def _serve(self, update: DeviceUpdate, index: int, offset: int, size: int) -> None:
        if not 0 <= index < len(self._names) or offset < 0 or not 0 < size <= 65536:
            log.warning("device %s asked for file %d at %d: not in this release",
                        update.target.base, index, offset)
            return
        data = self.release.files[self._names[index]][offset:offset + size]
        chunk = CHUNK_MAGIC + self._tag + bytes([index]) + offset.to_bytes(4, "big") + data
        self._client.publish(update.target.base + "cmd", chunk, qos=1)
        update.fetched += len(data)

    def _send_offer(self, update: DeviceUpdate) -> None:
        update.last_offer = time.monotonic()
        if update.state == "waiting":
            update.state = "offered"
        self._client.publish(update.target.base + "cmd", self._offer, qos=1)

    def _end(self, update: DeviceUpdate, state: str, detail: str) -> None:
        update.state, update.detail, update.ended = state, detail, time.monotonic()
