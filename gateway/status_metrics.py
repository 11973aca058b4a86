"""Prometheus gauges read from the workers' own state at each scrape: each connector's state,
spool mode and Kafka connection, and each supervised worker's state (the alert service).

The same state `GET /status` reports, so a dashboard and the health endpoint never disagree;
read at scrape time rather than set on every change, so the bridge's hot path carries nothing.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator, Mapping

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.connector import Connector, ConnectorStatus
from gateway.supervise import State, Supervisor

__all__ = ["StatusCollector"]

_CONNECTOR_STATES = typing.get_args(typing.get_type_hints(ConnectorStatus)["state"])


class StatusCollector(Collector):
    """`trackside_connector_*` and `trackside_worker_up`, from `status()` of each worker."""

    def __init__(
        self, connectors: Mapping[str, Connector], workers: Mapping[str, Supervisor]
    ) -> None:
        self._connectors = connectors
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        """One sample per connector (and state), one per worker."""
        state = GaugeMetricFamily(
            "trackside_connector_state",
            "1 for the state the connector is in (running, paused, failed, stopped), else 0",
            labels=["connector", "state"],
        )
        spooling = GaugeMetricFamily(
            "trackside_connector_spooling",
            "1 while the connector writes readings to its spool (Kafka away or replay pending), "
            "0 while it sends them straight to Kafka",
            labels=["connector"],
        )
        kafka_up = GaugeMetricFamily(
            "trackside_connector_kafka_up",
            "1 while the connector's Kafka answers, 0 while it is unreachable",
            labels=["connector"],
        )
        mqtt_up = GaugeMetricFamily(
            "trackside_connector_mqtt_up",
            "1 while the connector's MQTT session is up (always with the embedded broker, which "
            "runs in the same process), 0 while it is reconnecting",
            labels=["connector"],
        )
        for name, connector in self._connectors.items():
            status = connector.status()
            for each in _CONNECTOR_STATES:
                state.add_metric([name, each], float(status.state == each))
            spooling.add_metric([name], float(status.mode == "spooling"))
            kafka_up.add_metric([name], float(status.kafka == "reachable"))
            mqtt_up.add_metric([name], float(status.mqtt == "connected"))
        worker_up = GaugeMetricFamily(
            "trackside_worker_up",
            "1 while a supervised worker (the alert service) runs, 0 while it waits to be "
            "restarted after a failure or has stopped",
            labels=["worker"],
        )
        running: State = "running"
        for name, worker in self._workers.items():
            worker_up.add_metric([name], float(worker.state == running))
        yield from (state, spooling, kafka_up, mqtt_up, worker_up)
