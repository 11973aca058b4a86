"""Fixtures for the dashboard: its own topics, the server as a subprocess, and the browser."""

from __future__ import annotations

import contextlib
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from gateway.alertmanager import NotificationConfig
from gateway.localkafka import free_port
from gateway.topics import Topics
from tests.fixtures.alertmanager import AlertmanagerHandle, WebhookSink
from tests.fixtures.kafka import KafkaService
from tests.fixtures.processes import LOG_ROOT, ServiceError, ServiceProcess

TOKEN = "s3cret-test-token"


@dataclass(frozen=True)
class Dashboard:
    """A running dashboard: its URL, token, topics and Kafka."""

    url: str
    token: str
    topics: Topics
    bootstrap_servers: str

    def get(self, path: str) -> Any:
        """GET a JSON document from the server."""
        with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=10) as response:
            return json.load(response)

    def text(self, path: str) -> tuple[str, str]:
        """GET a document as text: (content type, body)."""
        with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=10) as response:
            return response.headers.get_content_type(), response.read().decode()

    def post(self, path: str, body: Any, token: str | None) -> int:
        """POST JSON with an optional bearer token; the HTTP status."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            self.url + path.lstrip("/"), json.dumps(body).encode(), headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)


def _create_topics(bootstrap: str, topics: Topics) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [topics.telemetry, topics.device_status, topics.alerts, topics.operator_actions]
    new = [NewTopic(name, num_partitions=2) for name in names]
    new += [
        NewTopic(name, num_partitions=1, config={"cleanup.policy": "compact"})
        for name in (topics.maintenance, topics.device_config, topics.ota_progress)
    ]
    for future in admin.create_topics(new, operation_timeout=30).values():
        future.result(timeout=60)


@contextlib.contextmanager
def _running(kafka: KafkaService, tmp_path: Path, options: list[str]) -> Iterator[Dashboard]:
    """`trackside dashboard` with `options` on a free port, reading uuid-suffixed topics;
    stopped with SIGTERM."""
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(
        telemetry=f"test.telemetry.{suffix}",
        device_status=f"test.device-status.{suffix}",
        alerts=f"test.alerts.{suffix}",
        maintenance=f"test.maintenance.{suffix}",
        operator_actions=f"test.operator-actions.{suffix}",
        device_config=f"test.device-config.{suffix}",
        ota_progress=f"test.ota-progress.{suffix}",
    )
    _create_topics(kafka.bootstrap_servers, topics)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "dashboard", "--port", str(port)]
    argv += ["--bootstrap-servers", kafka.bootstrap_servers, "--token-file", str(token_file)]
    names = ("telemetry", "device_status", "alerts", "maintenance", "operator_actions",
             "device_config", "ota_progress")
    for name in names:
        argv += [f"--{name.replace('_', '-')}-topic", getattr(topics, name)]
    argv += options
    log_file = LOG_ROOT / f"dashboard-{suffix}.log"
    service = ServiceProcess("dashboard", argv, "127.0.0.1", port, log_file)
    service.start(timeout=60)
    handle = Dashboard(f"http://127.0.0.1:{port}/", TOKEN, topics, kafka.bootstrap_servers)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if handle.get("/healthz")["status"] == "ok":
                    break
            except urllib.error.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServiceError(f"the dashboard did not become healthy:\n{service.tail()}")
            time.sleep(0.2)
        yield handle
    finally:  # stopped even when it never became healthy
        service.stop(timeout=30)
    assert "Traceback" not in service.tail(200), service.tail(200)


@pytest.fixture
def dashboard(kafka: KafkaService, tmp_path: Path) -> Iterator[Dashboard]:
    """The dashboard without Alertmanager (no maintenance windows)."""
    with _running(kafka, tmp_path, []) as handle:
        yield handle


@pytest.fixture
def windowed_dashboard(
    kafka: KafkaService,
    tmp_path: Path,
    alertmanager_factory: Callable[[NotificationConfig], AlertmanagerHandle],
    webhook_sink: WebhookSink,
) -> Iterator[tuple[Dashboard, AlertmanagerHandle]]:
    """The dashboard with a real Alertmanager for maintenance windows (both stopped after)."""
    receivers = [{"name": "desk", "webhook": [webhook_sink.url]}]
    notifications = NotificationConfig.model_validate(
        {"receivers": receivers, "default_receiver": "desk"}
    )
    manager = alertmanager_factory(notifications).start()
    with _running(kafka, tmp_path, ["--alertmanager-url", manager.url]) as handle:
        yield handle, manager
