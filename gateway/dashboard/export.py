"""The maintenance export: flagged trains with their alerts, for a maintenance management
system to import (`GET /api/maintenance.json` and `GET /api/maintenance.csv`).

A train is in it while it is flagged (`?all=1`: every train with a maintenance record, cleared
ones too). Its alerts are the latest event of every alert key that is active or changed since
the flag was set, so an alert that fired, flagged the train and resolved is still there.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from gateway.dashboard.fleet import ACTIVE_STATES, Fleet, alert_order
from gateway.dashboard.silences import Window

__all__ = ["CSV_COLUMNS", "maintenance_csv", "maintenance_report"]

JsonObject = dict[str, Any]

# One CSV row per alert of a flagged train (one row with empty alert columns when it has none).
CSV_COLUMNS = (
    "train_id",
    "flagged",
    "flagged_at",
    "flag_reason",
    "flag_cleared_by",
    "flag_cleared_at",
    "devices_disabled",
    "window_until",
    "window_by",
    "alert_key",
    "rule",
    "severity",
    "state",
    "device_id",
    "sensor",
    "value",
    "threshold",
    "unit",
    "since",
    "acknowledged_by",
    "acknowledged_at",
    "cleared_by",
    "cleared_at",
    "description",
    "runbook",
)

_ALERT_FIELDS = (
    "key",
    "rule",
    "severity",
    "state",
    "device_id",
    "sensor",
    "value",
    "threshold",
    "unit",
    "since_ms",
    "ts_ms",
    "acked_by",
    "acked_at_ms",
    "cleared_by",
    "cleared_at_ms",
    "description",
    "runbook",
    "headline",
)


def _alerts(train: JsonObject, flagged_since_ms: int) -> list[JsonObject]:
    latest: dict[str, JsonObject] = {}
    for event in train["alert_history"]:  # newest first
        latest.setdefault(event["key"], event)
    kept = [
        e
        for e in latest.values()
        if e["state"] in ACTIVE_STATES or int(e.get("ts_ms") or 0) >= flagged_since_ms
    ]
    return [{name: e.get(name) for name in _ALERT_FIELDS} for e in sorted(kept, key=alert_order)]


def maintenance_report(
    fleet: Fleet, windows: dict[str, Window], everything: bool = False
) -> list[JsonObject]:
    """Flagged trains (or, with `everything`, every train with a maintenance record)."""
    report = []
    for summary in fleet.fleet():
        record = summary["maintenance"]
        if record is None or not (summary["flagged"] or everything):
            continue
        train = fleet.train(summary["train_id"])
        if train is None:
            continue
        window = windows.get(summary["train_id"])
        flagged = bool(record["flagged"])
        report.append(
            {
                "train_id": summary["train_id"],
                "flagged": flagged,
                "reason": record.get("reason"),
                # A clear record keeps the flag's reason; its time and author are the clear's.
                "flagged_since_ms": record.get("since_ms") if flagged else None,
                "cleared_by": None if flagged else record.get("by"),
                "cleared_at_ms": None if flagged else record.get("since_ms"),
                "devices_disabled": bool(record.get("disabled")),
                "status": summary["status"],
                "last_seen_ms": summary["last_seen_ms"],
                "values": summary["values"],
                "maintenance_window": window.as_json() if window else None,
                "alerts": _alerts(train, int(record.get("since_ms") or 0) if flagged else 0),
            }
        )
    return report


def _time(ms: Any) -> str:
    """ISO 8601 in UTC, what an import expects; empty for none."""
    if not isinstance(ms, int | float) or isinstance(ms, bool):
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _text(value: Any) -> str:
    return "" if value is None else str(value)


# The alert fields behind the CSV's alert columns, in order (times end in `_ms`).
_CSV_ALERT_FIELDS = tuple(f for f in _ALERT_FIELDS if f not in ("ts_ms", "headline"))


def _cell(alert: JsonObject, field: str) -> str:
    return _time(alert[field]) if field.endswith("_ms") else _text(alert[field])


def maintenance_csv(report: list[JsonObject]) -> str:
    """The report as CSV (RFC 4180, header row, times in UTC ISO 8601)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for train in report:
        window = train["maintenance_window"] or {}
        head = [
            train["train_id"],
            "yes" if train["flagged"] else "no",
            _time(train["flagged_since_ms"]),
            _text(train["reason"]),
            _text(train["cleared_by"]),
            _time(train["cleared_at_ms"]),
            "yes" if train["devices_disabled"] else "no",
            _time(window.get("ends_at_ms")),
            _text(window.get("created_by")),
        ]
        for alert in train["alerts"] or [None]:
            cells = [_cell(alert, field) for field in _CSV_ALERT_FIELDS] if alert else []
            writer.writerow([*head, *cells] if cells else head + [""] * len(_CSV_ALERT_FIELDS))
    return out.getvalue()
