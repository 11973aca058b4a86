"""The whole chain, every part real: firmware on the unix port -> embedded broker (with the
device registry) -> bridge -> Kafka -> alert service -> `disable` back to the device -> the
device reports itself disabled; the dashboard in Chromium shows it, acknowledges the alert
and clears the flag, which enables the train again; its bearing still seized, the alert fires
again linked to the clear and the train is disabled again."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer
from playwright.sync_api import Page, expect

from gateway.alerts.config import DEFAULT_RULES
from gateway.localkafka import free_port
from gateway.registry import Registry
from gateway.topics import Topics
from tests.fixtures.kafka import KafkaService
from tests.fixtures.micropython import UnixDevice
from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.processes import LOG_ROOT, ServiceProcess
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.integration

TOKEN = "e2e-token"


@dataclass
class Gateway:
    broker: BrokerHandle
    dashboard_url: str
    topics: Topics
    bootstrap_servers: str
    registry: Registry


@pytest.fixture
def gateway(kafka: KafkaService, tmp_path: Path) -> Iterator[Gateway]:
    """`trackside gateway run` with broker, both connectors, alerts and dashboard."""
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    topics = Topics.with_prefix(prefix)
    bootstrap = kafka.bootstrap_servers
    rules = yaml.safe_load(DEFAULT_RULES.read_text())
    rules["policy"]["disable_train"] = True
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    mqtt_port, dashboard_port, http_port = free_port(), free_port(), free_port()
    prefixed = topics.model_dump()
    config = {
        "broker": {"port": mqtt_port, "registry": "devices.yaml"},
        "connectors": [
            {
                "name": "telemetry",
                "mqtt": {"client_id": f"{prefix}-telemetry"},
                "kafka": {"bootstrap_servers": bootstrap, "topic": topics.telemetry},
                "errors": {"deadletterqueue_topic_name": f"{prefix}.dead-letter"},
                "commands": {"topic": topics.commands, "group_id": f"{prefix}-commands"},
                "spool": {"path": "spool/telemetry"},
            },
            {
                "name": "device-status",
                "mqtt": {
                    "client_id": f"{prefix}-status",
                    "topics": ["trackside/v1/+/+/status"],
                    "topic_pattern": "trackside/v1/{train_id}/{device_id}/status",
                },
                "kafka": {
                    "bootstrap_servers": bootstrap,
                    "topic": topics.device_status,
                    "key": "{train_id}/{device_id}",
                },
                "transforms": [{"type": "headers"}],
                "converter": "raw",
                "spool": {"path": "spool/status"},
            },
        ],
        "alerts": {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "group_id": f"{prefix}-alerts",
                "transactional_id": f"{prefix}-alerts-0",
            },
            "topics": prefixed,
            "rules_file": "rules.yaml",
        },
        "dashboard": {
            "bootstrap_servers": bootstrap,
            "token": TOKEN,
            "token_operator": "Ana",  # the name actions taken with the token are recorded under
            "port": dashboard_port,
            "topics": prefixed,
        },
        "http": {"port": http_port},
    }
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    service = ServiceProcess(
        "gateway",
        [sys.executable, "-m", "gateway", "gateway", "run", "-c", str(tmp_path / "gateway.yaml")],
        "127.0.0.1",
        http_port,
        LOG_ROOT / f"{prefix}-gateway.log",
    )
    service.start(timeout=60)
    broker = BrokerHandle("embedded", [], "127.0.0.1", mqtt_port, service.log_file)
    yield Gateway(
        broker,
        f"http://127.0.0.1:{dashboard_port}/",
        topics,
        bootstrap,
        Registry(tmp_path / "devices.yaml"),
    )
    service.stop(timeout=30)


def states_in_kafka(gateway: Gateway, train: str, *wanted: str, timeout: float = 60) -> None:
    """Wait until the device's statuses in Kafka (through the bridge), each change counted
    once, have gone through the states `wanted` in that order."""
    consumer = Consumer(
        {
            "bootstrap.servers": gateway.bootstrap_servers,
            "group.id": f"e2e-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([gateway.topics.device_status])
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() or not (msg.key() or b"").startswith(train.encode()):
                continue
            state = json.loads(msg.value())["state"]
            if not seen or seen[-1] != state:
                seen.append(state)
            if _in_order(list(wanted), seen):
                return
    finally:
        consumer.close()
    raise AssertionError(f"{train} never went through {wanted!r} within {timeout} s; saw {seen}")


def _in_order(wanted: list[str], seen: list[str]) -> bool:
    """Whether `wanted` is a subsequence of `seen`."""
    rest = iter(seen)
    return all(state in rest for state in wanted)


def test_fault_to_alert_to_disable_and_back(
    gateway: Gateway, unix_device: Callable[..., UnixDevice], page: Page
) -> None:
    train = f"T{uuid.uuid4().hex[:8]}"
    password = gateway.registry.add_device(42, train)
    unix_device(
        gateway.broker,
        train_id=train,
        sample_ms=500,
        broker={"host": "127.0.0.1", "port": gateway.broker.port, "user": "device-42",
                "password": password},
        sim={"seed": 3, "fault": "bearing_overheat_sudden", "fault_start_s": 3.0},
    )  # fmt: skip

    # Device -> broker -> bridge -> Kafka -> alert service -> disable -> device.
    states_in_kafka(gateway, train, "online")
    states_in_kafka(gateway, train, "online", "disabled", timeout=90)

    # The dashboard shows it live; acknowledge and clear go through the alert service.
    page.goto(gateway.dashboard_url)
    row = page.locator(f'.train[data-train="{train}"]')
    expect(row.locator(".status")).to_have_text("disabled", timeout=30_000)
    expect(row.locator(".badge.maint")).to_have_text("maintenance")
    key = f"{train}/bearing_critical/42/bearing_left_temp"
    alert = page.locator(f'.alert[data-key="{key}"]')
    alert.locator("button.act").click()
    page.fill("#login-password", TOKEN)
    page.click("#login-ok")
    expect(alert.locator(".acked")).to_contain_text("acknowledged by Ana", timeout=30_000)

    page.goto(f"{gateway.dashboard_url}#/train/{train}")
    page.locator("#maintenance button.act").click()
    # The cleared flag may show only briefly: the still seized bearing fires again at once and
    # flags the train again; the clear is checked in the history below.
    expect(page.locator("#maintenance")).not_to_contain_text("Clear sent", timeout=30_000)
    states_in_kafka(gateway, train, "disabled", "online", timeout=60)  # `enable` reached it

    # The firmware's seized bearing stays seized (only the fast simulator's held train cools):
    # from fresh rule state the condition fires again, as a new alert linked to Ana's clear,
    # and the policy disables the train again.
    states_in_kafka(gateway, train, "disabled", "online", "disabled", timeout=90)

    def history() -> list[dict[str, Any]]:
        url = f"{gateway.dashboard_url}api/trains/{train}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return list(json.load(response)["alert_history"])

    wait_until(
        lambda: any(e.get("after_clear_ms") for e in history()), 30, "the re-fire in the history"
    )
    events = history()
    cleared = [e for e in events if e.get("cleared_by") == "Ana"]
    assert cleared, "the clear ended the alerts under Ana's name"
    again = [e for e in events if e.get("after_clear_ms") and e["state"] == "firing"]
    assert all("again after the clear by Ana" in e["message"] for e in again)
