"""Prometheus metrics of the bridge, labelled by connector."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "DEAD_LETTERED",
    "DEAD_LETTER_REASONS",
    "DELIVERED",
    "DROPPED",
    "IN_FLIGHT",
    "LATENCY",
    "RECEIVED",
    "REPLAYED",
    "SPOOLED",
    "SPOOL_BYTES",
    "SPOOL_ERRORS",
    "SPOOL_QUARANTINED",
]

RECEIVED = Counter("trackside_bridge_received", "MQTT messages received", ["connector"])
DELIVERED = Counter(
    "trackside_bridge_delivered",
    "Records Kafka acknowledged (acks=all), straight or replayed from the spool; dead letters "
    "are counted apart",
    ["connector"],
)
SPOOLED = Counter("trackside_bridge_spooled", "Records written to the local spool", ["connector"])
REPLAYED = Counter(
    "trackside_bridge_replayed", "Spooled records delivered to Kafka later", ["connector"]
)
DEAD_LETTERED = Counter(
    "trackside_bridge_dead_lettered",
    "Dead letters Kafka acknowledged on the dead-letter topic (readings and commands), by "
    "reason: the error class of their __connect.errors.exception.class.name header",
    ["connector", "reason"],
)
# The reasons a connector's dead letters have, created at 0 with the connector so that a
# dashboard sees the series before the first dead letter (Prometheus' advice for labels).
DEAD_LETTER_REASONS = ("RecordError", "TopicError", "RecordRefusedError", "CommandError")
DROPPED = Counter("trackside_bridge_dropped", "Messages dropped by a filter", ["connector"])
IN_FLIGHT = Gauge(
    "trackside_bridge_in_flight",
    "Readings taken from MQTT and not yet acknowledged (waiting for Kafka or the spool): the lag",
    ["connector"],
)
SPOOL_BYTES = Gauge("trackside_bridge_spool_bytes", "Bytes waiting in the spool", ["connector"])
SPOOL_QUARANTINED = Counter(
    "trackside_bridge_spool_quarantined",
    "Damaged spool frames (each normally one reading) set aside in the spool's quarantine file "
    "and not replayed: needs a person",
    ["connector"],
)
SPOOL_ERRORS = Counter(
    "trackside_bridge_spool_errors",
    "Spool appends the disk refused (full or failing); their readings stay unacknowledged",
    ["connector"],
)
LATENCY = Histogram(
    "trackside_bridge_latency_seconds",
    "From MQTT receipt to Kafka acknowledgement, sampled: the first reading of each received batch",
    ["connector"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
