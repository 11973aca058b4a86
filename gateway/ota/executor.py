"""The rollout executor: each gateway carries out the staged rollouts of the Kafka rollouts
topic for its own devices, and reports each device's progress back (docs/ota.md, "Staged
rollouts").

A worker for `gateway.supervise.Supervisor` (`run(stop)`). It reads the three OTA topics from
their beginning (`RolloutStore`), learns its devices from the retained statuses on its broker
(`Fleet`), and for each rollout offers the release through `gateway.ota.push.Push` in the
plan's order: canaries first, then the waves. Decisions that concern every gateway (the abort
rule, `done`) are taken from all gateways' progress records and written to the rollouts topic
by whichever gateway sees them first; the others follow the record.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion

from gateway.ota import OtaError
from gateway.ota.config import OtaSettings
from gateway.ota.push import DeviceUpdate, Push, Target
from gateway.ota.release import Release, load_public_key, read_release
from gateway.ota.rollout import (
    FINAL,
    DeviceProgress,
    RolloutPlan,
    RolloutState,
    abort_reason,
    assign_waves,
    canaries_done,
    device_name,
    progress_key,
)
from gateway.ota.store import RolloutStore, ota_topic_names
from gateway.topics import ensure_topics

__all__ = ["Fleet", "RolloutExecutor"]

log = logging.getLogger(__name__)

# Push's states as the progress topic names them: a device given the offer is "offered" until
# it asks for the first chunk.
_PROGRESS_STATE = {"waiting": "offered", "offered": "offered", "accepted": "offered",
                   "fetching": "fetching", "switching": "switching"}


class Fleet:
    """The devices whose status this gateway's broker holds (retained, so every device that
    ever connected), by their topics `trackside/v1/{train}/{device}/status`."""

    def __init__(self, settings: OtaSettings, host: str, port: int) -> None:
        self._lock = threading.Lock()
        self._seen: set[Target] = set()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                   client_id=f"trackside-ota-fleet-{settings.gateway_id}"[:64])
        if settings.mqtt_user:
            password = settings.mqtt_password
            self._client.username_pw_set(settings.mqtt_user,
                                         password.get_secret_value() if password else None)
        self._client.on_connect = lambda c, *_: c.subscribe("trackside/v1/+/+/status", 1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._address = (host, port)

    def start(self) -> None:
        """Connect and subscribe (the broker's retained statuses arrive right after)."""
        try:
            self._client.connect(*self._address)
        except OSError as exc:
            host, port = self._address
            raise OtaError(f"cannot reach the MQTT broker at {host}:{port} ({exc}): check "
                           "ota.mqtt_host and ota.mqtt_port") from exc
        self._client.loop_start()
        if not self._subscribed.wait(30):
            raise OtaError(f"the broker at {self._address[0]}:{self._address[1]} did not let us "
                           "subscribe to the devices' statuses: check ota.mqtt_user (a service "
                           "account)")

    def devices(self) -> set[Target]:
        """Every device seen so far."""
        with self._lock:
            return set(self._seen)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) == 5 and parts[4] == "status" and parts[3].isdigit():
            with self._lock:
                self._seen.add(Target(parts[2], int(parts[3])))

    def close(self) -> None:
        """Leave the broker."""
        self._client.loop_stop()
        self._client.disconnect()


class RolloutExecutor:
    """Runs every rollout of the rollouts topic for this gateway's devices, until stopped."""

    def __init__(self, settings: OtaSettings, host: str, port: int) -> None:
        self.settings = settings
        self.host, self.port = host, port

    def run(self, stop: threading.Event) -> None:
        """The worker: read the topics, then act on them every 0.2 s until `stop` is set."""
        settings = self.settings
        ensure_topics(settings.bootstrap_servers, settings.topics, settings.kafka_settings,
                      only=ota_topic_names(settings.topics),
                      replication_factor=settings.replication_factor)
        key = load_public_key(settings.public_key.read_text())
        store = RolloutStore(settings.bootstrap_servers, settings.topics, settings.kafka_settings)
        fleet = Fleet(settings, self.host, self.port)
        runs: dict[str, _Run] = {}
        try:
            store.catch_up()
            fleet.start()
            # The retained statuses arrive within moments; a rollout taken up before that
            # would leave out the devices not heard yet.
            stop.wait(settings.discovery_s)
            while not stop.is_set():
                store.poll(0.2)
                for plan_id in list(store.plans):
                    run = runs.get(plan_id)
                    if run is None:
                        run = runs[plan_id] = _Run(plan_id, store, fleet, self, key)
                    run.step()
        finally:
            for run in runs.values():
                run.close()
            fleet.close()
            store.close()


class _Run:
    """One rollout on this gateway: its targets, their waves, and the push to them."""

    def __init__(self, plan_id: str, store: RolloutStore, fleet: Fleet,
                 executor: RolloutExecutor, key: Ed25519PublicKey) -> None:
        self.plan_id = plan_id
        self.store, self.executor, self.key = store, executor, key
        self.gateway = executor.settings.gateway_id
        plan = store.plans[plan_id]
        mine = {p.target for p in self._progress() if p.gateway == self.gateway}
        if plan.state in ("running", "paused"):  # a finished one takes no new devices
            mine |= {t for t in fleet.devices() if plan.selects(t)}
        self.waves = assign_waves(plan, mine)
        self.push: Push | None = None
        self.release: Release | None = None
        self.started: deque[float] = deque()  # when devices were offered, for the rate
        self._waiting_logged = False
        for target, wave in self.waves.items():
            if progress_key(plan_id, target) not in store.progress:
                self._report(target, wave, "pending")

    @property
    def plan(self) -> RolloutPlan:
        """The rollout's latest record."""
        return self.store.plans[self.plan_id]

    def _progress(self) -> list[DeviceProgress]:
        return [p for p in self.store.progress.values() if p.rollout == self.plan_id]

    def _state(self, target: Target) -> str:
        record = self.store.progress.get(progress_key(self.plan_id, target))
        return record.state if record is not None else "pending"

    def step(self) -> None:
        """Take the central decisions, offer to the devices due, follow the push."""
        plan = self.plan
        # The abort rule first, on every gateway: one that read a verdict before the rollout
        # record saying aborted must not offer to its next wave in between.
        if plan.state in ("running", "paused"):
            reason = abort_reason(plan, self._progress())
            if reason is not None:
                log.warning("rollout %s aborted: %s", plan.id, reason)
                self._set_state("aborted", reason)
            elif plan.state == "running" and self._finished():
                self._set_state("done", "")
            plan = self.plan
        in_flight = [t for t in self.waves if self._state(t) not in FINAL | {"pending"}]
        if self.push is None and in_flight:
            self._start_push(in_flight)  # a restart mid-rollout: follow them to their verdict
        if plan.state == "running":
            due = self._due()
            if due:
                self._start_push(due)
        if self.push is not None:
            unfinished = self.push.step()
            self._sync()
            if not unfinished and (plan.state != "running" or "pending" not in map(
                    self._state, self.waves)):
                self.close()  # nothing left to follow: no idle MQTT session per rollout
                self.push = None

    def _due(self) -> list[Target]:
        """The pending devices whose wave may start now, within the plan's rate."""
        plan = self.plan
        pending = sorted((w, t.train_id, t.device_id) for t, w in self.waves.items()
                         if self._state(t) == "pending")
        if not pending:
            return []
        allowed = 0
        if canaries_done(plan, self.store.progress):
            allowed = 1
            while allowed < len(plan.waves) and all(
                self._state(t) in FINAL for t, w in self.waves.items() if w <= allowed
            ):
                allowed += 1
        due = [Target(train, device) for wave, train, device in pending if wave <= allowed]
        if plan.rate_per_min is not None:
            now = time.monotonic()
            while self.started and now - self.started[0] > 60:
                self.started.popleft()
            due = due[:max(0, plan.rate_per_min - len(self.started))]
        return due

    def _start_push(self, targets: list[Target]) -> None:
        release = self._release()
        if release is None:
            return
        if self.push is None:
            settings = self.executor.settings
            password = settings.mqtt_password
            self.push = Push(release, [], self.executor.host, self.executor.port,
                             settings.mqtt_user,
                             password.get_secret_value() if password else None,
                             timeout_s=self.plan.timeout_s, retry_s=settings.retry_s,
                             rid=f"ota-{self.plan_id}")
            self.push.start()
        self.push.add(targets)
        self.started.extend(time.monotonic() for _ in targets)
        for target in targets:
            if self._state(target) == "pending":
                self._report(target, self.waves[target], "offered")

    def _release(self) -> Release | None:
        """The plan's release, verified with this gateway's key; None while it has not
        arrived (the aborted rollout's reason says so if it does not verify)."""
        if self.release is not None:
            return self.release
        plan = self.plan
        bundle = self.store.releases.get(plan.release)
        if bundle is None:
            if not self._waiting_logged:
                log.warning("rollout %s waits for release %s in %s", plan.id, plan.release,
                            self.store.topics.ota_releases)
                self._waiting_logged = True
            return None
        try:
            self.release = read_release(bundle, self.key)
        except OtaError as exc:
            reason = f"gateway {self.gateway}: release {plan.release} is not to be trusted: {exc}"
            log.error("rollout %s aborted: %s", plan.id, reason)
            self._set_state("aborted", reason)
            return None
        return self.release

    def _sync(self) -> None:
        """Write each device whose update moved on to the progress topic."""
        assert self.push is not None
        for update in list(self.push.updates.values()):
            state = _PROGRESS_STATE.get(update.state, update.state)
            record = self.store.progress.get(progress_key(self.plan_id, update.target))
            if record is None or record.state != state:
                self._report(update.target, self.waves.get(update.target, 0), state, update)

    def _finished(self) -> bool:
        """Every device of the rollout, on every gateway, has a verdict."""
        progress = self._progress()
        return bool(progress) and canaries_done(self.plan, self.store.progress) and all(
            p.state in FINAL for p in progress)

    def _report(self, target: Target, wave: int, state: str,
                update: DeviceUpdate | None = None) -> None:
        detail = update.detail if update is not None else ""
        if state in FINAL:
            log.info("rollout %s: %s %s %s", self.plan_id, device_name(target), state, detail)
        self.store.put_progress(DeviceProgress(
            rollout=self.plan_id, train_id=target.train_id, device_id=target.device_id,
            gateway=self.gateway, wave=wave, state=state, detail=detail,
            fetched=update.fetched if update is not None else 0))

    def _set_state(self, state: RolloutState, reason: str) -> None:
        self.store.put_plan(self.plan.model_copy(
            update={"state": state, "reason": reason, "updated": time.time()}))

    def close(self) -> None:
        """Leave the broker (devices mid-update carry on; a later run follows them again)."""
        if self.push is not None:
            self.push.close()
