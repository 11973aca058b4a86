"""docs/monitoring.md and docs/monitoring/: the Grafana dashboard is one Grafana imports, and
every metric it and the page name is on a running gateway's `/metrics`."""

from __future__ import annotations

import json
import re
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.localkafka import free_port
from gateway.topics import Topics
from tests.bridge.streams import publish_readings
from tests.fixtures.kafka import KafkaService
from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.processes import LOG_ROOT
from tests.fixtures.waiting import wait_until

DOCS = Path(__file__).resolve().parents[2] / "docs"
DASHBOARD = DOCS / "monitoring" / "grafana-dashboard.json"
METRIC = re.compile(r"\btrackside_[a-z0-9_]+\b(?!\*)")  # `trackside_connector_*` is a family


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return queries


def _named_metrics() -> dict[str, str]:
    """Metric name -> where it is named: the dashboard's queries and the monitoring page."""
    named = {name: "the dashboard" for q in _queries(_dashboard()) for name in METRIC.findall(q)}
    for name in METRIC.findall((DOCS / "monitoring.md").read_text()):
        named.setdefault(name, "docs/monitoring.md")
    return named


def test_the_dashboard_is_one_grafana_10_imports() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 38  # Grafana 10.0
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert target["refId"]
    for query in _queries(dashboard):
        # A cheap syntax check: brackets, braces and quotes balance.
        for opening, closing in ("()", "[]", "{}"):
            assert query.count(opening) == query.count(closing), query
        assert query.count('"') % 2 == 0, query
    assert len(_named_metrics()) >= 20


def _scrape(url: str) -> set[str]:
    """The sample names (`..._total`, `..._bucket`) and family names on `url`."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def _value(url: str, name: str) -> float:
    """The sum of the samples called `name` on `url`."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    return sum(sample.value for sample in samples if sample.name == name)


@pytest.mark.integration
def test_every_metric_the_dashboard_and_the_docs_name_is_on_a_running_gateway(
    tmp_path: Path, kafka: KafkaService
) -> None:
    prefix = f"mon-{uuid.uuid4().hex[:8]}"
    topics = Topics.with_prefix(prefix)
    mqtt_port, http_port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "broker": {"port": mqtt_port},
                "connectors": [
                    {
                        "name": "telemetry",
                        "kafka": {
                            "bootstrap_servers": kafka.bootstrap_servers,
                            "topic": topics.telemetry,
                        },
                        "errors": {"deadletterqueue_topic_name": f"{prefix}.dead-letter"},
                        "spool": {"path": str(tmp_path / "spool")},
                    }
                ],
                "alerts": {
                    "kafka": {
                        "bootstrap_servers": kafka.bootstrap_servers,
                        "group_id": f"{prefix}-alerts",
                        "transactional_id": f"{prefix}-alerts-0",
                    },
                    "topics": topics.model_dump(),
                },
                "http": {"port": http_port},
            }
        )
    )
    argv = [sys.executable, "-m", "gateway", "gateway", "run", "-c", str(config)]
    log_file = LOG_ROOT / f"gateway-{prefix}" / "gateway.log"
    gateway = BrokerHandle("gateway", argv, "127.0.0.1", mqtt_port, log_file)
    gateway.start(timeout=60)
    metrics = f"http://127.0.0.1:{http_port}/metrics"
    try:
        publish_readings(gateway, "trackside", [("T7", 7)], 20)
        delivered, evaluated = "trackside_bridge_delivered_total", "trackside_alerts_readings_total"
        wait_until(lambda: _value(metrics, delivered) >= 20, 60, "20 readings delivered to Kafka")
        wait_until(lambda: _value(metrics, evaluated) >= 20, 60, "20 readings evaluated")
        served = _scrape(metrics)
    finally:
        gateway.stop()
    missing = {name: where for name, where in _named_metrics().items() if name not in served}
    assert not missing, f"named but not on /metrics: {missing}"
