"""Alert changes to Prometheus Alertmanager (`POST /api/v2/alerts`), off the Kafka path.

The service hands every committed alert event to `Notifier.publish`, which only queues it; one
thread posts. Like Prometheus, the thread re-sends every active alert each `resend_s` with an
`endsAt` a few periods ahead, so Alertmanager resolves alerts of a service that died, and
learns again what it lost when it restarted. A post that fails is retried (1 s doubling to
`resend_s`) with everything active, so an Alertmanager that was down misses nothing that is
still true; a resolve it missed is posted until it is accepted. After a restart of the service
the active alerts are taken from the restored rule states (`restored`), which live in Kafka.

With several instances each notifies for its own partitions' trains: `restored` is given the
states of the partitions it was just assigned, and `forget` drops the trains of a partition it
gave up from what it re-sends, without resolving them: their new owner re-sends them.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from gateway.alerts import AlertError
from gateway.alerts.rules import UNITS, RuleSet, StaleRule
from gateway.alerts.state import StateStore
from gateway.supervise import Backoff

__all__ = [
    "ALERTMANAGER_UP",
    "FAILED_POSTS",
    "FLAG_ALERT",
    "AlertmanagerSettings",
    "Notifier",
    "flag_event",
    "to_alertmanager",
]

log = logging.getLogger(__name__)

ALERTMANAGER_UP = Gauge(
    "trackside_alerts_alertmanager_up",
    "1 while Alertmanager accepted the last post of alert changes, 0 while it is away",
)
FAILED_POSTS = Counter(
    "trackside_alerts_alertmanager_posts_failed",
    "Posts of alert changes to Alertmanager that failed (they are retried)",
)

# How many resend periods an active alert's endsAt lies ahead (Prometheus uses 4): a service
# that stops posting has its alerts resolved by Alertmanager after that long.
_ENDS_AFTER_PERIODS = 4
_POST_TIMEOUT_S = 5.0
# Where the desk reads what a rule means, for rules without a `runbook` of their own.
_RUNBOOK = "docs/alerts.md, default rules and their sources"
# The alert that stands for a train's maintenance flag while it is set (`kind: maintenance`);
# the notification file's `flagged_over_its_alerts` inhibition mutes the alerts that flag.
FLAG_ALERT = "train_flagged"


class AlertmanagerSettings(BaseModel):
    """`alertmanager:` of the alert service file; notifications are off when it is absent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: HttpUrl = Field(description="Alertmanager's base URL, e.g. http://127.0.0.1:9094")
    resend_s: float = Field(30.0, gt=0, le=600)
    runbook: str = Field(_RUNBOOK, description="the runbook annotation, before `(rule)`")


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def to_alertmanager(
    event: dict[str, Any],
    kind: str,
    runbook: str,
    now_ms: int,
    resend_s: float,
    description: str = "",
) -> dict[str, Any]:
    """One alert event (the alerts topic's record) as an Alertmanager v2 alert; `description`
    is the rule's, when it has one."""
    value, threshold, sensor = event.get("value"), event.get("threshold"), str(event["sensor"])
    unit = "s" if kind == "stale" else UNITS.get(sensor.split("-", 1)[0], "")
    annotations = {
        "summary": f"{_subject(event)}: {event['message']}",
        "value": f"{value:g} {unit}".strip() if isinstance(value, int | float) else "",
        "threshold": f"{threshold:g} {unit}".strip() if isinstance(threshold, int | float) else "",
        "runbook": str(event.get("runbook") or f"{runbook} ({event['rule']})"),
    }
    if description:
        annotations["description"] = description
    if event.get("acked_by"):
        annotations["acknowledged_by"] = str(event["acked_by"])
    # Like Prometheus (FiredAt): a firing alert starts when it fired, not when it began to be
    # pending; an old start would also make Alertmanager skip `group_wait` for its group. A
    # resolve carries only the pending start.
    started = event.get("since_ms") if event["state"] == "resolved" else event.get("ts_ms")
    since = started or now_ms
    labels = {
        "alertname": str(event["rule"]),
        "train": str(event["train_id"]),
        "device": str(event["device_id"]),
        "rule": str(event["rule"]),
        "sensor": sensor,
        "severity": str(event["severity"]),
        "kind": kind,
    }
    if event.get("flags"):
        labels["flags"] = "true"  # it flags its train: muted while the flag's alert fires
    if kind == "maintenance":  # one per train: no device, sensor or rule
        labels = {k: labels[k] for k in ("alertname", "train", "severity", "kind")}
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": _iso(min(since, now_ms)),
    }
    if event["state"] == "resolved":
        # Device clocks drift: an end in the future would keep the alert firing until then.
        ended = min(int(event.get("ts_ms") or now_ms), now_ms)
        alert["endsAt"] = _iso(max(ended, min(since, now_ms)))
    else:
        alert["endsAt"] = _iso(now_ms + _ENDS_AFTER_PERIODS * resend_s * 1000)
    return alert


def flag_event(flag: dict[str, Any]) -> dict[str, Any]:
    """A maintenance record (`trackside.maintenance`) as the alert event of its flag."""
    disabled = "; disabled" if flag.get("disabled") else ""
    return {
        "train_id": flag["train_id"],
        "device_id": "",
        "rule": FLAG_ALERT,
        "sensor": "",
        "severity": "critical",
        "kind": "maintenance",
        "state": "firing" if flag["flagged"] else "resolved",
        "value": None,
        "threshold": None,
        "ts_ms": flag["since_ms"],
        "since_ms": flag["since_ms"],
        "message": (
            f"flagged for maintenance by {flag['reason']}{disabled}"
            if flag["flagged"]
            else f"maintenance flag cleared by {flag['by']}"
        ),
        "runbook": "inspect the train, then clear its flag on the dashboard",
    }


def _subject(event: dict[str, Any]) -> str:
    """`T104 device 3`, or `T104` for the train's own (maintenance) alert."""
    if event.get("kind") == "maintenance":
        return str(event["train_id"])
    return f"{event['train_id']} device {event['device_id']}"


@dataclass(frozen=True)
class _Forget:
    """Queued by `Notifier.forget`: stop re-sending the alerts of these trains."""

    gone: Callable[[str], bool]


def _identity(event: dict[str, Any]) -> tuple[str, ...]:
    """What makes two events the same Alertmanager alert (the labels that vary)."""
    return tuple(str(event[k]) for k in ("train_id", "device_id", "rule", "sensor"))


class Notifier:
    """Posts alert changes to Alertmanager from its own thread; `publish` never blocks."""

    def __init__(self, settings: AlertmanagerSettings, rules: RuleSet) -> None:
        self.settings = settings
        self.endpoint = f"{str(settings.url).rstrip('/')}/api/v2/alerts"
        self._rules = {rule.name: rule for rule in rules.rules}
        self._policy = rules.policy
        self._events: queue.SimpleQueue[list[dict[str, Any]] | _Forget | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self.failure: str | None = None  # why the thread ended, if it did by a bug
        self.up: bool | None = None  # whether the last post was accepted; None before one
        self.posts = 0  # accepted posts
        self.failed_posts = 0

    # -- the service's side ---------------------------------------------------------------

    def restored(self, store: StateStore) -> None:
        """After the service restored state (all of it, or the partitions it was just
        assigned): (re)start the thread and post what fires there, and what resolved within
        the last `4 x resend_s` (a resolve committed just before a crash may not have been
        posted)."""
        recent_ms = time.time() * 1000 - _ENDS_AFTER_PERIODS * self.settings.resend_s * 1000
        events = []
        for state in store.rules.values():
            rule = self._rules.get(state.rule)
            if rule is None or not (
                state.state == "firing"
                or (state.state == "resolved" and (state.ts_ms or 0) >= recent_ms)
            ):
                continue
            threshold = rule.after_s if isinstance(rule, StaleRule) else rule.threshold
            events.append(
                {
                    "train_id": state.train_id,
                    "device_id": state.device_id,
                    "rule": state.rule,
                    "sensor": state.sensor,
                    "severity": "critical" if state.escalated else rule.severity,
                    "flags": self._policy.flags(rule, state.escalated),
                    "runbook": rule.runbook,
                    "state": state.state,
                    "value": state.value,
                    "threshold": threshold,
                    "ts_ms": state.ts_ms,
                    "since_ms": state.since_ms,
                    "message": f"{state.rule} {state.state} on {state.sensor} (restored)",
                    "acked_by": state.acked_by,
                    # A running thread knows these alerts at least as well: it keeps its own.
                    "_restored": True,
                }
            )
        for flag in store.maintenance.values():
            if flag.flagged:
                events.append({**flag_event(asdict(flag)), "_restored": True})
        if self._thread is None or not self._thread.is_alive():
            self.failure = None
            self._thread = threading.Thread(target=self._run, name="alerts-notify", daemon=True)
            self._thread.start()
        self._events.put(events)

    def forget(self, gone: Callable[[str], bool]) -> None:
        """Stop re-sending the alerts of the trains for which `gone(train_id)` holds (their
        partition moved away); Alertmanager keeps them, and their new owner re-sends them.
        Changes already queued for them are still posted."""
        self._events.put(_Forget(gone))

    def publish(
        self, events: list[dict[str, Any]], flags: list[dict[str, Any]] | None = None
    ) -> None:
        """Queue the alert events and maintenance flags of a committed transaction; raises
        if the thread died."""
        if self.failure is not None:
            raise AlertError(f"the Alertmanager notifier failed: {self.failure}; restarting")
        changes = events + [flag_event(flag) for flag in flags or ()]
        if changes:
            self._events.put(changes)

    def stop(self, timeout: float = 2 * _POST_TIMEOUT_S) -> None:
        """Post what is not posted yet (one try), end the thread; Alertmanager resolves what
        is still active when its endsAt passes."""
        if self._thread is not None:
            self._events.put(None)
            self._thread.join(timeout)
            self._thread = None

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a bug: the service sees it at its next publish
            self.failure = f"{type(exc).__name__}: {exc}"
            log.exception("the Alertmanager notifier failed; the alert service restarts")

    def _loop(self) -> None:
        resend_s = self.settings.resend_s
        active: dict[tuple[str, ...], dict[str, Any]] = {}  # firing, by alert identity
        unsent: dict[tuple[str, ...], dict[str, Any]] = {}  # changes not yet accepted
        backoff = Backoff(initial_s=1.0, max_s=resend_s)
        failures = 0
        next_resend = time.monotonic() + resend_s
        not_before = 0.0
        wait = resend_s
        while True:
            try:
                first = self._events.get(timeout=max(wait, 0.0))
            except queue.Empty:
                first = []
            for batch in [first, *self._drain()]:
                if batch is None:  # stop: one last try for what Alertmanager has not got
                    if unsent:
                        self._post(list(unsent.values()))
                    return
                if isinstance(batch, _Forget):
                    active = {k: e for k, e in active.items() if not batch.gone(k[0])}
                    continue
                for event in batch:
                    key = _identity(event)
                    if event.get("_restored") and (key in active or key in unsent):
                        continue
                    if event["state"] == "resolved":
                        active.pop(key, None)
                    else:
                        active[key] = event
                    unsent[key] = event
            now = time.monotonic()
            if now < not_before:  # backing off after a failed post
                wait = not_before - now
                continue
            # After a failure Alertmanager may have restarted and lost everything: send all.
            resend = now >= next_resend or failures > 0
            todo = {**active, **unsent} if resend else unsent
            if todo and not self._post(list(todo.values())):
                not_before = time.monotonic() + backoff.delay(failures)
                failures += 1
                wait = not_before - time.monotonic()
                continue
            unsent.clear()
            failures = 0
            if resend:
                next_resend = now + resend_s
            wait = next_resend - time.monotonic()

    def _drain(self) -> list[list[dict[str, Any]] | _Forget | None]:
        out: list[list[dict[str, Any]] | _Forget | None] = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def _post(self, events: list[dict[str, Any]]) -> bool:
        now_ms = int(time.time() * 1000)
        body = [
            to_alertmanager(
                e,
                str(e.get("kind") or self._kind(str(e["rule"]))),
                self.settings.runbook,
                now_ms,
                self.settings.resend_s,
                self._description(str(e["rule"])),
            )
            for e in events
        ]
        request = urllib.request.Request(
            self.endpoint,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=_POST_TIMEOUT_S) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            detail = f"HTTP {exc.code}: {exc.read()[:300]!r}"
            if 400 <= exc.code < 500:  # not an outage: a malformed alert, a bug of Trackside's
                detail += "; Alertmanager refused the alerts, please report this as a bug"
            self._down(detail)
            return False
        except (urllib.error.URLError, OSError) as exc:
            self._down(str(getattr(exc, "reason", exc)))
            return False
        self.posts += 1
        ALERTMANAGER_UP.set(1)
        if self.up is False:
            log.warning("Alertmanager at %s accepts alerts again", self.settings.url)
        self.up = True
        return True

    def _description(self, rule: str) -> str:
        known = self._rules.get(rule)
        return known.description if known is not None else ""

    def _kind(self, rule: str) -> str:
        known = self._rules.get(rule)
        return known.kind if known is not None else "unknown"

    def _down(self, why: str) -> None:
        self.failed_posts += 1
        FAILED_POSTS.inc()
        ALERTMANAGER_UP.set(0)
        if self.up is not False:
            log.warning(
                "cannot post alerts to Alertmanager at %s (%s); retrying, nothing is lost "
                "while the service runs (start it with `trackside alertmanager up`)",
                self.settings.url,
                why,
            )
        self.up = False
