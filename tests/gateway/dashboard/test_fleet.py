"""The fleet view model, built from sequences of records as Kafka would deliver them."""

from __future__ import annotations

from gateway.dashboard.fleet import ALERT_HISTORY, Fleet, RecordKind
from tests.gateway.dashboard.records import NOW, alert, flag, reading


def _apply(fleet: Fleet, kind: RecordKind, key: str | None, value: bytes | None) -> bool:
    return fleet.apply(kind, None if key is None else key.encode(), value, NOW)


def test_readings_make_trains_with_latest_values_and_bounded_history() -> None:
    fleet = Fleet(history=5)
    for seq in range(12):
        _apply(fleet, "telemetry", "T101", reading("T101", seq))
    _apply(fleet, "telemetry", "T102", reading("T102", 0, speed=12.5))

    assert [t["train_id"] for t in fleet.fleet()] == ["T101", "T102"]
    train = fleet.train("T101")
    assert train is not None
    assert train["values"] == {"engine_temp": 91.0}
    assert train["status"] == "online"
    assert train["last_seen_ms"] == NOW
    recent = [[NOW + s * 1000, 80.0 + s] for s in range(7, 12)]
    assert train["channels"]["engine_temp"][-5:] == recent  # the kept values, then before them
    older = train["channels"]["engine_temp"][:-5]  # each 30 s's lowest and highest
    assert older and all(point[0] < recent[0][0] for point in older)
    assert [NOW, 80.0] in older


def test_the_hour_before_the_recent_values_keeps_each_30_s_lowest_and_highest() -> None:
    fleet = Fleet(history=120)
    for seq in range(3600):  # an hour at one reading a second, one spike 50 minutes ago
        value = 150.0 if seq == 600 else 80.0 + seq % 3
        _apply(fleet, "telemetry", "T101", reading("T101", seq, engine_temp=value))
    train = fleet.train("T101")
    assert train is not None
    points = train["channels"]["engine_temp"]
    assert points[-120:] == [[NOW + s * 1000, 80.0 + s % 3] for s in range(3480, 3600)]
    assert points[0][0] - NOW < 30_000 and NOW + 3_599_000 - points[0][0] > 3_500_000
    assert [NOW + 600_000, 150.0] in points  # the peak survives the thinning
    assert len(points) <= 120 + 2 * 120
    assert [p[0] for p in points] == sorted(p[0] for p in points)


def test_redelivered_readings_are_drawn_once() -> None:
    fleet = Fleet()
    for seq in (0, 1, 1, 2, 0):
        _apply(fleet, "telemetry", "T101", reading("T101", seq))
    train = fleet.train("T101")
    assert train is not None
    assert [v for _, v in train["channels"]["engine_temp"]] == [80.0, 81.0, 82.0]


def test_device_status_sets_train_status_and_last_will_takes_it_offline() -> None:
    fleet = Fleet()
    _apply(fleet, "status", "T101/42", b'{"state": "online", "boot_id": 1}')
    _apply(fleet, "status", "T101/43", b'{"state": "online"}')
    assert fleet.fleet()[0]["status"] == "online"
    _apply(fleet, "status", "T101/42", b'{"state": "offline"}')
    assert fleet.fleet()[0]["status"] == "online"
    _apply(fleet, "status", "T101/43", b'{"state": "disabled"}')
    assert fleet.fleet()[0]["status"] == "disabled"
    _apply(fleet, "status", "T101/43", b'{"state": "offline"}')
    summary = fleet.fleet()[0]
    assert summary["status"] == "offline"
    assert summary["devices"] == {"42": "offline", "43": "offline"}


def test_alert_transitions_keep_the_latest_event_and_the_history() -> None:
    fleet = Fleet()
    key = "T101/bearing_hot/42/bearing_left_temp"
    _apply(fleet, "alerts", key, alert("T101", "firing"))
    assert [a["state"] for a in fleet.alerts()] == ["firing"]
    assert fleet.fleet()[0]["active_alerts"] == 1
    assert fleet.fleet()[0]["worst_severity"] == "critical"

    _apply(fleet, "alerts", key, alert("T101", "acknowledged", acked_by="ana", acked_at_ms=NOW))
    active = fleet.alerts()
    assert [(a["state"], a["acked_by"]) for a in active] == [("acknowledged", "ana")]
    assert fleet.fleet()[0]["active_alerts"] == 1

    _apply(fleet, "alerts", key, alert("T101", "resolved"))
    assert fleet.alerts() == []
    assert [a["state"] for a in fleet.alerts(active_only=False)] == ["resolved"]
    assert fleet.fleet()[0]["active_alerts"] == 0
    train = fleet.train("T101")
    assert train is not None
    assert [e["state"] for e in train["alert_history"]] == ["resolved", "acknowledged", "firing"]


def test_alert_history_per_train_is_bounded() -> None:
    fleet = Fleet()
    for n in range(ALERT_HISTORY + 30):
        state = "firing" if n % 2 == 0 else "resolved"
        _apply(fleet, "alerts", "k", alert("T101", state, ts_ms=NOW + n))
    train = fleet.train("T101")
    assert train is not None
    assert len(train["alert_history"]) == ALERT_HISTORY
    assert train["alert_history"][0]["ts_ms"] == NOW + ALERT_HISTORY + 29


def test_maintenance_flag_set_cleared_and_tombstoned() -> None:
    fleet = Fleet()
    _apply(fleet, "maintenance", "T101", flag("T101", True))
    summary = fleet.fleet()[0]
    assert summary["flagged"] is True
    assert summary["maintenance"]["by"] == "alerts"
    _apply(fleet, "maintenance", "T101", flag("T101", False, by="ana"))
    summary = fleet.fleet()[0]
    assert summary["flagged"] is False
    assert summary["maintenance"]["by"] == "ana"
    _apply(fleet, "maintenance", "T101", None)
    assert fleet.fleet()[0]["maintenance"] is None


def test_changes_name_each_touched_train_and_alert_once() -> None:
    fleet = Fleet()
    _apply(fleet, "telemetry", "T101", reading("T101", 0))
    _apply(fleet, "telemetry", "T101", reading("T101", 1))
    _apply(fleet, "alerts", "T102/bearing_hot/42/bearing_left_temp", alert("T102", "firing"))
    changes = fleet.take_changes()
    assert [t["train_id"] for t in changes.trains] == ["T101", "T102"]
    assert [a["train_id"] for a in changes.alerts] == ["T102"]
    assert not fleet.take_changes()


def test_records_that_break_the_contract_are_counted_not_raised() -> None:
    fleet = Fleet()
    bad: list[tuple[RecordKind, str | None, bytes | None]] = [
        ("telemetry", "T1", b"\xff\xfe not json"),
        ("telemetry", "T1", b'{"train_id": "T1"}'),
        ("telemetry", "T1", b'{"train_id": "T1", "device_id": 1, "boot_id": 1, "seq": 1,'
         b' "ts_ms": 1, "values": {"x": "hot"}}'),
        ("telemetry", "T1", b"[1, 2, 3]"),
        ("telemetry", "T1", reading("T1", 0, engine_temp=float("nan"))),
        ("status", "no-slash", b'{"state": "online"}'),
        ("status", "T1/abc", b'{"state": "online"}'),
        ("status", "T1/1", b'{"state": "exploded"}'),
        ("alerts", "k", b'{"state": "firing"}'),
        ("alerts", "k", b'{"key": "k", "train_id": "T1", "state": "pending"}'),
        ("maintenance", "T1", b'{"train_id": "T1", "flagged": "yes"}'),
        ("maintenance", None, None),
        ("telemetry", "T1", b"null"),
    ]
    for kind, key, value in bad:
        assert not _apply(fleet, kind, key, value), (kind, key, value)
    assert fleet.rejected == len(bad)
    assert fleet.accepted == 0
    assert fleet.alerts() == []
    assert fleet.fleet() == []
