"""A maintenance window set from the dashboard in Chromium silences that train's notifications,
and no other train's: the real dashboard, alert service, Kafka, Alertmanager and a webhook."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from gateway.alertmanager import NotificationConfig
from gateway.alerts.config import KafkaSettings, ServiceConfig
from gateway.alerts.notify import AlertmanagerSettings
from gateway.alerts.rules import RuleSet
from gateway.alerts.service import AlertService
from gateway.topics import Topics
from tests.fixtures.alertmanager import AlertmanagerHandle, WebhookSink
from tests.fixtures.kafka import KafkaService
from tests.fixtures.waiting import wait_until
from tests.gateway.dashboard.conftest import Dashboard, _running
from tests.gateway.dashboard.records import produce, reading

pytestmark = pytest.mark.integration

RULES = RuleSet.model_validate(
    {
        "rules": [
            {
                "name": "bearing_warm",
                "kind": "threshold",
                "channels": ["bearing_left_temp"],
                "above": 100,
                "severity": "warning",
            }
        ]
    }
)


@pytest.fixture
def desk(
    kafka: KafkaService,
    tmp_path: Path,
    alertmanager_factory: Callable[[NotificationConfig], AlertmanagerHandle],
    webhook_sink: WebhookSink,
) -> Iterator[Dashboard]:
    """Alertmanager (group_wait 1 s), the dashboard on it, and the alert service posting to
    it from the dashboard's topics."""
    notifications = NotificationConfig.model_validate(
        {
            "receivers": [{"name": "desk", "webhook": [webhook_sink.url]}],
            "default_receiver": "desk",
            "group_wait": "1s",
        }
    )
    manager = alertmanager_factory(notifications).start()
    with _running(kafka, tmp_path, ["--alertmanager-url", manager.url]) as dashboard:
        suffix = dashboard.topics.telemetry.rsplit(".", 1)[1]
        # The dashboard's topics, and this test's own for what only the alert service uses
        # (its state topics must have the telemetry's two partitions, which the dashboard's
        # single-partition maintenance topic has not: flags play no part here).
        defaults = Topics().model_dump()
        topics = Topics(
            **{
                name: f"{value}.{suffix}" if value == defaults[name] else value
                for name, value in dashboard.topics.model_dump().items()
            }
            | {"maintenance": f"test.alert-maintenance.{suffix}"}
        )
        config = ServiceConfig(
            kafka=KafkaSettings(
                bootstrap_servers=kafka.bootstrap_servers,
                group_id=f"window-{suffix}",
                transactional_id=f"window-{suffix}",
                partitions=2,
            ),
            topics=topics,
            alertmanager=AlertmanagerSettings(url=manager.url, resend_s=5.0),
        )
        service = AlertService(config, RULES)
        stop = threading.Event()
        runner = threading.Thread(target=service.run, args=(stop,), daemon=True)
        runner.start()
        try:
            wait_until(service.ready.is_set, 60, "the alert service running")
            yield dashboard
        finally:
            stop.set()
            runner.join(30)


def test_a_window_set_in_the_browser_silences_that_train_and_no_other(
    desk: Dashboard, page: Page, webhook_sink: WebhookSink
) -> None:
    now_ms = int(time.time() * 1000)
    cool = [(t, reading(t, 0, at_ms=now_ms, bearing_left_temp=40.0)) for t in ("T101", "T103")]
    produce(desk.bootstrap_servers, desk.topics.telemetry, cool)
    page.goto(f"{desk.url}#/train/T103")
    page.click("#who")
    page.fill("#login-password", desk.token)
    page.click("#login-ok")
    until = datetime.now() + timedelta(hours=2)  # the browser's time zone is this machine's
    page.fill("#window-until", until.strftime("%Y-%m-%dT%H:%M"))
    page.fill("#window-comment", "bearing change")
    page.click("#window-set")
    expect(page.locator("#window")).to_contain_text("in the depot")

    # Both trains' left bearings go warm in one burst: only T101's is told.
    hot = [(t, reading(t, 1, at_ms=now_ms, bearing_left_temp=120.0)) for t in ("T101", "T103")]
    produce(desk.bootstrap_servers, desk.topics.telemetry, hot)

    def trains_told() -> set[str]:
        return {
            alert["labels"]["train"]
            for post in webhook_sink.received()
            for alert in post["alerts"]
            if alert["status"] == "firing"
        }

    wait_until(lambda: "T101" in trains_told(), 30, "T101's notification")
    # Both alerts reached Alertmanager in the same post; give T103's group the same time again.
    told_at = time.monotonic()
    wait_until(lambda: time.monotonic() - told_at > 3, 5, "T103's group time")
    assert trains_told() == {"T101"}, webhook_sink.received()
    alerts = {a["train_id"]: a for a in desk.get("/api/alerts")["alerts"]}
    assert set(alerts) == {"T101", "T103"}  # silenced is not hidden: the desk still sees it
