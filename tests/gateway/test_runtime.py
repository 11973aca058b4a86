"""`trackside gateway run`: embedded broker with the registry, a connector, HTTP control."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from gateway.localkafka import free_port
from gateway.registry import Registry
from tests.bridge.streams import publish_readings, read_topic, seqs_by_device
from tests.fixtures.kafka import KafkaService
from tests.fixtures.mqtt import BrokerHandle

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
             "reason": None, "received": 50}
        ]  # fmt: skip
        assert http("POST", f"{base}/connectors/telemetry/pause")[0] == 401
        assert http("POST", f"{base}/connectors/telemetry/pause", "letmein")[1]["state"] == "paused"
        assert http("POST", f"{base}/connectors/nope/pause", "letmein")[0] == 404
        publish_readings(
            device, "trackside", [("T7", 7)], 10, boot_id=2, credentials=("device-7", password)
        )
        assert len(read_topic(kafka.bootstrap_servers, topic, 51, timeout=3)) == 50  # paused
        assert http("POST", f"{base}/connectors/telemetry/resume", "letmein")[1]["state"] == (
            "running"
        )
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
