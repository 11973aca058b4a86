"""Prometheus metrics of the alert service (the Kafka gauge lives in `kafka_link`)."""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["ABORTED", "DUPLICATES", "EVENTS", "READINGS", "REJECTED", "STATE_SKIPPED"]

ABORTED = Counter(
    "trackside_alerts_transactions_aborted",
    "Transactions aborted and replayed from the last committed offsets",
)
STATE_SKIPPED = Counter(
    "trackside_alerts_state_records_skipped",
    "Malformed records of the alert-state and maintenance topics skipped during restore",
)
# Counted when the transaction that holds them commits: what the service has done for good.
READINGS = Counter("trackside_alerts_readings", "Readings evaluated against the rules")
DUPLICATES = Counter(
    "trackside_alerts_duplicates", "Readings skipped as duplicates (same device, boot id, seq)"
)
REJECTED = Counter(
    "trackside_alerts_records_rejected", "Malformed telemetry, status or action records skipped"
)
EVENTS = Counter(
    "trackside_alerts_events", "Alert events written (firing, resolved, acknowledged)"
)
