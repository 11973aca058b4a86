"""`trackside gateway run`: embedded broker with the registry, a connector, HTTP control."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from bridge.config import ConnectorConfig
from gateway import runtime
from gateway.alerts import AlertError
from gateway.alerts.config import KafkaSettings, ServiceConfig
from gateway.alerts.service import AlertService
from gateway.config import EmbeddedBroker, GatewayConfig, HttpSettings
from gateway.localkafka import free_port
from gateway.registry import Registry
from gateway.topics import Topics
from tests.bridge.streams import Background, publish_readings, read_topic, seqs_by_device
from tests.fixtures.kafka import KafkaService
from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.integration


def http(method: str, url: str, token: str | None = None) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def wait_for(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def test_gateway_run_end_to_end(tmp_path: Path, kafka: KafkaService) -> None:
    topic = f"gw-{uuid.uuid4().hex[:8]}.telemetry"
    registry = Registry(tmp_path / "devices.yaml")
    password = registry.add_device(7, "T7")
    mqtt_port, http_port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "broker": {"port": mqtt_port, "registry": "devices.yaml"},
                "connectors": [
                    {
                        "name": "telemetry",
                        "mqtt": {"port": mqtt_port, "client_id": f"gw-{uuid.uuid4().hex[:6]}"},
                        "kafka": {"bootstrap_servers": kafka.bootstrap_servers, "topic": topic},
                        "spool": {"path": "spool"},
                    }
                ],
                "http": {"port": http_port, "token": "letmein"},
            }
        )
    )
    log = (tmp_path / "gateway.log").open("w")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "gateway", "run", "-c", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{http_port}"
    try:
        wait_for(f"{base}/healthz")
        device = BrokerHandle("gateway", [], "127.0.0.1", mqtt_port, tmp_path / "unused.log")
        publish_readings(device, "trackside", [("T7", 7)], 50, credentials=("device-7", password))
        records = read_topic(kafka.bootstrap_servers, topic, 50)
        assert seqs_by_device(records)[7] == list(range(50))

        status, body = http("GET", f"{base}/status")
        assert status == 200
        assert body["connectors"] == [
            {"name": "telemetry", "state": "running", "mode": "direct", "spool_bytes": 0,
             "reason": None, "kafka": "reachable", "problem": None, "mqtt": "connected",
             "received": 50}
        ]  # fmt: skip
        assert http("POST", f"{base}/connectors/telemetry/pause")[0] == 401
        assert http("POST", f"{base}/connectors/telemetry/pause", "letmein")[1]["state"] == "paused"
        assert http("POST", f"{base}/connectors/nope/pause", "letmein")[0] == 404
        # Paused: the broker holds the readings unacknowledged until the connector resumes.
        paused_device = Background(
            publish_readings,
            device, "trackside", [("T7", 7)], 10, 0.0, 2, ("device-7", password),
        )  # fmt: skip
        paused_device.start()
        assert len(read_topic(kafka.bootstrap_servers, topic, 51, timeout=3)) == 50  # paused
        assert paused_device.is_alive()  # not acknowledged
        assert http("POST", f"{base}/connectors/telemetry/resume", "letmein")[1]["state"] == (
            "running"
        )
        paused_device.result(60)
        assert len(read_topic(kafka.bootstrap_servers, topic, 60, settle=1)) == 60  # kept
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'trackside_bridge_delivered_total{connector="telemetry"} 60.0' in metrics
        assert 'trackside_bridge_in_flight{connector="telemetry"} 0.0' in metrics
        assert password not in (tmp_path / "gateway.log").read_text()

        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) == 0
    finally:
        if gateway.poll() is None:
            gateway.kill()
        log.close()


def _restarts() -> float:
    sample = REGISTRY.get_sample_value(
        "trackside_worker_restarts_total", {"worker": "alert service"}
    )
    return sample or 0.0


async def test_a_failing_alert_service_is_restarted_while_the_connectors_keep_running(
    tmp_path: Path,
    kafka: KafkaService,
    mosquitto: BrokerHandle,
    unique_topic: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topics = Topics.with_prefix(unique_topic)
    started: list[AlertService] = []

    class FailsTwice(AlertService):
        """Fails like a fenced or broken producer on its first two runs."""

        def run(self, stop: threading.Event) -> None:
            started.append(self)
            if len(started) <= 2:
                raise AlertError("the Kafka producer failed (test)")
            super().run(stop)

    monkeypatch.setattr(runtime, "AlertService", FailsTwice)
    connector = ConnectorConfig.model_validate(
        {
            "name": "telemetry",
            "mqtt": {
                "host": mosquitto.host,
                "port": mosquitto.port,
                "client_id": f"gw-{uuid.uuid4().hex[:6]}",
                "topics": [f"{unique_topic}/v1/+/+/telemetry"],
                "topic_pattern": f"{unique_topic}/v1/{{train_id}}/{{device_id}}/telemetry",
            },
            "kafka": {"bootstrap_servers": kafka.bootstrap_servers, "topic": topics.telemetry},
            "spool": {"path": str(tmp_path / "spool")},
        }
    )
    config = GatewayConfig(
        broker=EmbeddedBroker(enabled=False),
        connectors=(connector,),
        http=HttpSettings(port=0),
        alerts=ServiceConfig(
            kafka=KafkaSettings(
                bootstrap_servers=kafka.bootstrap_servers,
                group_id=f"{unique_topic}-alerts",
                transactional_id=f"{unique_topic}-alerts-0",
            ),
            topics=topics,
        ),
    )
    restarts_before = _restarts()
    stop = asyncio.Event()
    ready: list[str] = []
    with caplog.at_level(logging.ERROR, logger="gateway.supervise"):
        gateway = asyncio.create_task(runtime.run_gateway(config, ready.append, stop))
        try:
            await asyncio.to_thread(
                wait_until, lambda: "alert service running" in ready, 60, "the gateway up"
            )
            # Readings flow through the connector while the alert service fails and restarts.
            await asyncio.to_thread(publish_readings, mosquitto, unique_topic, [("T7", 7)], 30)
            records = await asyncio.to_thread(read_topic, kafka.bootstrap_servers,
                                              topics.telemetry, 30)  # fmt: skip
            assert seqs_by_device(records)[7] == list(range(30))
            await asyncio.to_thread(
                wait_until,
                lambda: len(started) == 3 and started[-1].ready.is_set(),
                60,
                "the alert service running after two failures",
            )
            assert not gateway.done()
        finally:
            stop.set()
            await asyncio.wait_for(gateway, 60)
    assert _restarts() - restarts_before == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.supervise"]
    assert [line.rsplit(";", 1)[-1] for line in lines] == [
        " restarting it in 1 s",
        " restarting it in 2 s",
    ]
    assert all(line.startswith("alert service failed: the Kafka producer failed (test)")
               for line in lines)  # fmt: skip
