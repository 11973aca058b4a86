"""Prometheus metrics of the alert service (the Kafka gauge lives in `kafka_link`)."""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["ABORTED", "STATE_SKIPPED"]

ABORTED = Counter(
    "trackside_alerts_transactions_aborted",
    "Transactions aborted and replayed from the last committed offsets",
)
STATE_SKIPPED = Counter(
    "trackside_alerts_state_records_skipped",
    "Malformed records of the alert-state and maintenance topics skipped during restore",
)
