"""gateway/alerts/notify.py: alert changes to the real Alertmanager, which notifies a real SMTP
server and a webhook; grouping, inhibition, resolves, and an Alertmanager outage."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from gateway.alertmanager import NotificationConfig
from gateway.alerts.config import DEFAULT_RULES, KafkaSettings, ServiceConfig, load_service_config
from gateway.alerts.notify import AlertmanagerSettings, Notifier, to_alertmanager
from gateway.alerts.rules import RuleError, RuleSet, load_rules
from gateway.alerts.service import AlertService
from gateway.alerts.state import StateName, StateStore
from gateway.topics import Topics
from tests.fixtures.alertmanager import AlertmanagerHandle, MailSink, WebhookSink
from tests.fixtures.kafka import KafkaService
from tests.fixtures.waiting import wait_until

EVENT: dict[str, Any] = {
    "key": "T104/bearing_critical/1/bearing_left_temp",
    "train_id": "T104",
    "device_id": 1,
    "rule": "bearing_critical",
    "sensor": "bearing_left_temp",
    "severity": "critical",
    "state": "firing",
    "value": 130.0,
    "threshold": 111.0,
    "ts_ms": 1_767_225_606_000,
    "since_ms": 1_767_225_600_000,
    "message": "bearing_left_temp 130.0 degC over ambient_temp above 111",
    "acked_by": None,
    "acked_at_ms": None,
}
NOW_MS = 1_767_225_610_000


def test_a_firing_event_becomes_an_alert_with_labels_annotations_and_a_future_end() -> None:
    alert = to_alertmanager(EVENT, "threshold", "docs/alerts.md", NOW_MS, 30.0)
    assert alert["labels"] == {
        "alertname": "bearing_critical",
        "train": "T104",
        "device": "1",
        "rule": "bearing_critical",
        "sensor": "bearing_left_temp",
        "severity": "critical",
        "kind": "threshold",
    }
    assert alert["annotations"] == {
        "summary": "T104 device 1: bearing_left_temp 130.0 degC over ambient_temp above 111",
        "value": "130 degC",
        "threshold": "111 degC",
        "runbook": "docs/alerts.md (bearing_critical)",
    }
    assert alert["startsAt"] == "2026-01-01T00:00:06.000+00:00"  # fired, not pending
    described = to_alertmanager(EVENT, "threshold", "", NOW_MS, 30.0, "Stop and inspect")
    assert described["annotations"]["description"] == "Stop and inspect"
    assert alert["endsAt"] == "2026-01-01T00:02:10.000+00:00"  # now + 4 x 30 s


def test_a_resolved_event_ends_at_its_reading_never_in_the_future() -> None:
    resolved = {**EVENT, "state": "resolved", "ts_ms": NOW_MS - 1000}
    alert = to_alertmanager(resolved, "threshold", "", NOW_MS, 30.0)
    assert alert["endsAt"] == "2026-01-01T00:00:09.000+00:00"
    ahead = {**EVENT, "state": "resolved", "ts_ms": NOW_MS + 60_000}  # a device clock ahead
    assert to_alertmanager(ahead, "threshold", "", NOW_MS, 30.0)["endsAt"] == (
        "2026-01-01T00:00:10.000+00:00"
    )
    acked = to_alertmanager({**EVENT, "acked_by": "ana"}, "threshold", "", NOW_MS, 30.0)
    assert acked["annotations"]["acknowledged_by"] == "ana"


def test_the_service_file_turns_notifications_on_and_names_its_mistakes(tmp_path: Path) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text("alertmanager: {url: http://127.0.0.1:9094, resend_s: 15}\n")
    settings = load_service_config(path).alertmanager
    assert settings is not None and settings.resend_s == 15
    path.write_text("alertmanager: {url: 127.0.0.1:9094, resend: 15}\n")
    with pytest.raises(RuleError) as caught:
        load_service_config(path)
    assert str(caught.value).startswith(f"{path}: alertmanager.url: ")
    assert "alertmanager.resend: Extra inputs are not permitted" in str(caught.value)


def test_notifier_retries_until_accepted_and_resends_what_fires(
    webhook_sink: WebhookSink,
) -> None:
    """Against a plain HTTP receiver that refuses at first: nothing is lost, and the active
    alert is sent again each period while the resolved one is not."""
    webhook_sink.refuse = 2  # the next two posts get HTTP 503
    url = webhook_sink.url.removesuffix("/alerts")
    notifier = Notifier(AlertmanagerSettings(url=url, resend_s=0.5), load_rules(DEFAULT_RULES))
    notifier.restored(StateStore())
    try:
        other = {**EVENT, "train_id": "T7", "key": "T7/bearing_critical/1/bearing_left_temp"}
        notifier.publish([EVENT, other])
        notifier.publish([{**other, "state": "resolved"}])
        wait_until(lambda: notifier.posts >= 3, 20, "three accepted posts")
        assert notifier.failed_posts == 2
        assert REGISTRY.get_sample_value("trackside_alerts_alertmanager_up") == 1
        assert (
            REGISTRY.get_sample_value("trackside_alerts_alertmanager_posts_failed_total") or 0
        ) >= 2
        posts = webhook_sink.received()
        first = {a["labels"]["train"]: a for a in posts[0]}
        assert set(first) == {"T104", "T7"}
        assert "endsAt" in first["T7"]
        assert [[a["labels"]["train"] for a in post] for post in posts[1:3]] == [["T104"]] * 2
    finally:
        notifier.stop()


def test_after_a_restore_what_fires_and_what_just_resolved_is_posted_and_stop_flushes(
    webhook_sink: WebhookSink,
) -> None:
    now_ms = int(time.time() * 1000)
    store = StateStore()
    states: list[tuple[str, StateName, int]] = [
        ("T1", "firing", now_ms - 3_600_000),  # fires for an hour: posted
        ("T2", "resolved", now_ms - 1000),  # resolved a second ago: posted, maybe unsent
        ("T3", "resolved", now_ms - 3_600_000),  # resolved long ago: Alertmanager knows
        ("T4", "pending", now_ms),  # not an alert
    ]
    for train, state, ts_ms in states:
        rule_state = store.rule(train, "bearing_critical", 1, "bearing_left_temp")
        rule_state.state, rule_state.ts_ms, rule_state.value = state, ts_ms, 130.0
        rule_state.since_ms = ts_ms - 1000
    url = webhook_sink.url.removesuffix("/alerts")
    notifier = Notifier(AlertmanagerSettings(url=url, resend_s=60), load_rules(DEFAULT_RULES))
    notifier.restored(store)
    try:
        wait_until(lambda: notifier.posts >= 1, 10, "the restored alerts posted")
        restored = {a["labels"]["train"]: a for a in webhook_sink.received()[0]}
        assert set(restored) == {"T1", "T2"}
        assert restored["T1"]["annotations"]["threshold"] == "111 degC"
        webhook_sink.refuse = 1  # the next post fails: stop must try once more
        notifier.publish([{**EVENT, "train_id": "T5"}])
        wait_until(lambda: notifier.failed_posts >= 1, 10, "a refused post")
    finally:
        notifier.stop()
    assert [a["labels"]["train"] for a in webhook_sink.received()[-1]] == ["T5"]


def test_a_partition_given_up_is_forgotten_not_resolved(webhook_sink: WebhookSink) -> None:
    """Its new owner re-sends its alerts: the old one stops re-sending them and never posts a
    resolve for them."""
    url = webhook_sink.url.removesuffix("/alerts")
    notifier = Notifier(AlertmanagerSettings(url=url, resend_s=0.3), load_rules(DEFAULT_RULES))
    notifier.restored(StateStore())
    started = datetime.now(UTC).isoformat(timespec="milliseconds")
    try:
        notifier.publish([EVENT, {**EVENT, "train_id": "T7"}])
        wait_until(lambda: notifier.posts >= 2, 10, "a post and a re-send")
        notifier.forget(lambda train_id: train_id == "T7")
        sent = len(webhook_sink.received())
        wait_until(lambda: len(webhook_sink.received()) >= sent + 2, 10, "two more re-sends")
    finally:
        notifier.stop()
    later = [a for post in webhook_sink.received()[sent + 1 :] for a in post]
    assert {a["labels"]["train"] for a in later} == {"T104"}
    # Every post of T7 said "firing" (an end ahead); a resolve would end before the test began.
    t7 = [a for post in webhook_sink.received() for a in post if a["labels"]["train"] == "T7"]
    assert t7 and all(a["endsAt"] > started for a in t7)


# -- with Kafka, the alert service and the real Alertmanager ------------------------------

TEST_NOTIFICATIONS = {
    "receivers": [{"name": "desk", "webhook": ["WEBHOOK"], "email": ["desk@example.org"]}],
    "default_receiver": "desk",
    "smtp": {"smarthost": "SMTP", "from": "trackside@example.org", "require_tls": False},
    "group_wait": "2s",
    "group_interval": "2s",
    "repeat_interval": "1h",
}


def _notifications(webhook: WebhookSink, mail: MailSink) -> NotificationConfig:
    raw = json.loads(
        json.dumps(TEST_NOTIFICATIONS)
        .replace("WEBHOOK", webhook.url)
        .replace("SMTP", f"127.0.0.1:{mail.port}")
    )
    return NotificationConfig.model_validate(raw)


def _reading(train: str, seq: int, ts_ms: int, left: float) -> bytes:
    return json.dumps(
        {
            "train_id": train,
            "device_id": 1,
            "boot_id": 1,
            "seq": seq,
            "ts_ms": ts_ms,
            "values": {"ambient_temp": 25.0, "bearing_left_temp": left, "bearing_right_temp": 30.0},
        }
    ).encode()


class Fleet:
    """Sends readings of trains to the telemetry topic."""

    def __init__(self, bootstrap_servers: str, topics: Topics) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 0})
        self.topic = topics.telemetry
        self.actions_topic = topics.operator_actions
        self.seq = 0

    def send(self, train: str, left: float, ago_ms: int = 0) -> None:
        """One reading of device 1 of `train`, `ago_ms` old by its own clock."""
        self.seq += 1
        now_ms = int(time.time() * 1000)
        self.producer.produce(self.topic, _reading(train, self.seq, now_ms - ago_ms, left), train)
        assert self.producer.flush(10) == 0

    def bearing_fault(self, train: str) -> None:
        """Left bearing 100 degC over ambient, 6 s later 130: every bearing rule fires at once
        (the warnings after their 5 s `for`)."""
        self.send(train, 125.0, ago_ms=6000)
        self.send(train, 155.0)

    def clear(self, train: str) -> None:
        """Bearings back near ambient: every bearing rule resolves."""
        self.send(train, 30.0)

    def action(self, action: dict[str, Any]) -> None:
        """An operator action, as the dashboard writes it."""
        self.producer.produce(self.actions_topic, json.dumps(action).encode(), action["train_id"])
        assert self.producer.flush(10) == 0


@contextmanager
def _alert_service(
    kafka: KafkaService, prefix: str, alertmanager_url: str, rules: RuleSet, resend_s: float = 5.0
) -> Iterator[AlertService]:
    config = ServiceConfig(
        kafka=KafkaSettings(
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=f"{prefix}-alerts",
            transactional_id=f"{prefix}-alerts-0",
        ),
        topics=Topics.with_prefix(prefix),
        alertmanager=AlertmanagerSettings(url=alertmanager_url, resend_s=resend_s),
    )
    service = AlertService(config, rules)
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop,), daemon=True)
    runner.start()
    try:
        wait_until(service.ready.is_set, 60, "the alert service running")
        yield service
    finally:
        stop.set()
        runner.join(30)


def _without_stale(rules: RuleSet) -> RuleSet:
    """The default rules without `device_stale`: a test longer than 60 s would see it fire."""
    return rules.model_copy(update={"rules": tuple(r for r in rules.rules if r.kind != "stale")})


def _never_flagging(rules: RuleSet) -> RuleSet:
    """`rules` with no rule flagging its train: each alert is told on its own."""
    unflagged = tuple(r.model_copy(update={"flag": False}) for r in rules.rules)
    return rules.model_copy(update={"rules": unflagged})


def _of(posts: list[dict[str, Any]], train: str, status: str) -> list[dict[str, Any]]:
    return [p for p in posts if p["groupLabels"].get("train") == train and p["status"] == status]


@pytest.mark.integration
def test_one_bearing_fault_is_one_notification_and_one_email_then_one_resolved(
    kafka: KafkaService,
    unique_topic: str,
    alertmanager_factory: Callable[[NotificationConfig], AlertmanagerHandle],
    webhook_sink: WebhookSink,
    mail_sink: MailSink,
) -> None:
    manager = alertmanager_factory(_notifications(webhook_sink, mail_sink)).start()
    topics = Topics.with_prefix(unique_topic)
    fleet = Fleet(kafka.bootstrap_servers, topics)
    rules = _without_stale(load_rules(DEFAULT_RULES))
    with _alert_service(kafka, unique_topic, manager.url, rules) as service:
        started = time.monotonic()
        fleet.bearing_fault("T104")
        wait_until(lambda: _of(webhook_sink.received(), "T104", "firing"), 30, "the firing webhook")
        latency = time.monotonic() - started
        wait_until(lambda: len(mail_sink.messages) >= 1, 30, "the firing e-mail")
        fleet.clear("T104")  # the bearing cools: its alerts resolve, the train stays flagged
        fleet.action({"action": "clear", "train_id": "T104", "by": "maria", "at_ms": 1})
        wait_until(
            lambda: _of(webhook_sink.received(), "T104", "resolved"), 30, "the resolved webhook"
        )
        wait_until(lambda: len(mail_sink.messages) >= 2, 30, "the resolved e-mail")
        assert service.notifier is not None and service.notifier.failed_posts == 0
    posts = webhook_sink.received()
    assert [p["status"] for p in posts] == ["firing", "resolved"], posts
    # Four bearing rules fired and flagged the train: the flag's own alert mutes them (and the
    # critical one the warnings), so one message for the train names what flagged it.
    (flag,) = posts[0]["alerts"]
    assert flag["labels"] == {
        "alertname": "train_flagged",
        "train": "T104",
        "severity": "critical",
        "kind": "maintenance",
    }
    summary = flag["annotations"]["summary"]
    assert summary.startswith("T104: flagged for maintenance by T104/bearing_"), summary
    # The clear ends the flag and the alerts it muted, in one message.
    resolved = {a["labels"]["alertname"]: a for a in posts[1]["alerts"]}
    assert {a["status"] for a in resolved.values()} == {"resolved"}
    assert "cleared by maria" in resolved["train_flagged"]["annotations"]["summary"]
    assert "bearing_critical" in resolved
    subjects = mail_sink.subjects()
    assert len(subjects) == 2, subjects
    assert "FIRING" in subjects[0] and "T104" in subjects[0], subjects
    assert "RESOLVED" in subjects[1], subjects
    print(f"fault reading -> webhook notification: {latency:.2f} s (group_wait 2 s)")


def test_a_warning_that_does_not_flag_is_told_with_value_threshold_and_runbook(
    kafka: KafkaService,
    unique_topic: str,
    alertmanager_factory: Callable[[NotificationConfig], AlertmanagerHandle],
    webhook_sink: WebhookSink,
    mail_sink: MailSink,
) -> None:
    manager = alertmanager_factory(_notifications(webhook_sink, mail_sink)).start()
    fleet = Fleet(kafka.bootstrap_servers, Topics.with_prefix(unique_topic))
    rules = RuleSet.model_validate(
        {
            "rules": [
                {
                    "name": "bearing_warm",
                    "kind": "threshold",
                    "channels": ["bearing_left_temp"],
                    "above": 100,
                    "severity": "warning",
                    "description": "left axle-box bearing warm",
                    "runbook": "watch it; inspect at the next stop",
                }
            ]
        }
    )
    with _alert_service(kafka, unique_topic, manager.url, rules):
        fleet.send("T7", 120.0)
        wait_until(lambda: _of(webhook_sink.received(), "T7", "firing"), 30, "the webhook")
    (alert,) = webhook_sink.received()[0]["alerts"]
    assert (alert["labels"]["rule"], alert["labels"]["severity"]) == ("bearing_warm", "warning")
    assert "flags" not in alert["labels"]
    assert alert["annotations"]["value"] == "120 degC"
    assert alert["annotations"]["threshold"] == "100 degC"
    assert alert["annotations"]["runbook"] == "watch it; inspect at the next stop"
    assert alert["annotations"]["description"] == "left axle-box bearing warm"


# A refused post is retried after 1 s, doubling up to `resend_s`, and a firing alert's end lies
# 4 x `resend_s` ahead: with `resend_s` at 1 s, a 6 s outage has retries at their cap and
# outlasts the end of every alert posted before it, as a 30 s outage does with 5 s.
OUTAGE_RESEND_S = 1.0
OUTAGE_S = 6.0


@pytest.mark.integration
def test_alertmanager_down_for_6_s_loses_no_notification(
    kafka: KafkaService,
    unique_topic: str,
    alertmanager_factory: Callable[[NotificationConfig], AlertmanagerHandle],
    webhook_sink: WebhookSink,
    mail_sink: MailSink,
) -> None:
    manager = alertmanager_factory(_notifications(webhook_sink, mail_sink)).start()
    fleet = Fleet(kafka.bootstrap_servers, Topics.with_prefix(unique_topic))
    rules = _without_stale(load_rules(DEFAULT_RULES))
    with _alert_service(kafka, unique_topic, manager.url, rules, OUTAGE_RESEND_S) as service:
        notifier = service.notifier
        assert notifier is not None
        fleet.bearing_fault("T1")
        wait_until(lambda: _of(webhook_sink.received(), "T1", "firing"), 30, "T1 firing")

        manager.stop()
        down = time.monotonic()
        fleet.clear("T1")  # resolves while Alertmanager is away
        fleet.action({"action": "clear", "train_id": "T1", "by": "maria", "at_ms": 1})
        fleet.bearing_fault("T2")  # fires while Alertmanager is away
        wait_until(lambda: notifier.up is False, 30, "the notifier noticing the outage")
        wait_until(lambda: time.monotonic() - down >= OUTAGE_S, 40, "the whole outage")
        assert not _of(webhook_sink.received(), "T2", "firing")
        manager.start()
        back = time.monotonic()

        wait_until(lambda: _of(webhook_sink.received(), "T2", "firing"), 60, "T2 firing")
        t2_after = time.monotonic() - back
        wait_until(lambda: _of(webhook_sink.received(), "T1", "resolved"), 60, "T1 resolved")
        fleet.clear("T2")
        fleet.action({"action": "clear", "train_id": "T2", "by": "maria", "at_ms": 2})
        wait_until(lambda: _of(webhook_sink.received(), "T2", "resolved"), 30, "T2 resolved")
        assert notifier.up is True
    posts = webhook_sink.received()
    for train in ("T1", "T2"):
        assert len(_of(posts, train, "firing")) == 1, posts
        assert len(_of(posts, train, "resolved")) == 1, posts
    print(f"T2's notification {t2_after:.1f} s after Alertmanager was back")


@pytest.mark.integration
def test_an_offline_device_mutes_its_sensor_alerts(
    kafka: KafkaService,
    unique_topic: str,
    alertmanager_factory: Callable[[NotificationConfig], AlertmanagerHandle],
    webhook_sink: WebhookSink,
    mail_sink: MailSink,
) -> None:
    manager = alertmanager_factory(_notifications(webhook_sink, mail_sink)).start()
    topics = Topics.with_prefix(unique_topic)
    fleet = Fleet(kafka.bootstrap_servers, topics)
    rules = _never_flagging(load_rules(DEFAULT_RULES))
    with _alert_service(kafka, unique_topic, manager.url, rules):
        fleet.bearing_fault("T9")
        wait_until(lambda: _of(webhook_sink.received(), "T9", "firing"), 30, "T9 firing")
        # The board's last will: the stale rule fires for device 1 of T9.
        fleet.producer.produce(topics.device_status, b'{"state": "offline"}', b"T9/1")
        assert fleet.producer.flush(10) == 0
        wait_until(
            lambda: len(_of(webhook_sink.received(), "T9", "firing")) >= 2,
            30,
            "the notification with the offline device",
        )
    first, second = _of(webhook_sink.received(), "T9", "firing")[:2]
    assert {a["labels"]["rule"] for a in first["alerts"]} == {
        "bearing_critical",
        "bearing_difference",
    }
    assert [(a["labels"]["rule"], a["labels"]["kind"]) for a in second["alerts"]] == [
        ("device_stale", "stale")
    ]
