"""The maintenance desk's dashboard (issue 11) against the real Kafka, the real Alertmanager and
Debian's headless Chromium: alert order, units and plain lines, charts with rule levels, dates,
updates that keep clicks, the phone layout, the export and maintenance windows."""

from __future__ import annotations

import csv
import io
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Producer
from playwright.sync_api import Browser, Page, expect

from tests.fixtures.alertmanager import AlertmanagerHandle
from tests.fixtures.processes import LOG_ROOT
from tests.fixtures.waiting import wait_until
from tests.gateway.dashboard.conftest import Dashboard
from tests.gateway.dashboard.records import alert, flag, produce, read_actions, reading

pytestmark = pytest.mark.integration

DATE = re.compile(
    r"^\d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)( \d{4})? \d\d:\d\d:\d\d$"
)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _fleet(dashboard: Dashboard, trains: int = 3, at_ms: int | None = None) -> int:
    """Trains T101.. with 60 readings each (one a second, ending now); T103 flagged."""
    start_ms = (at_ms or _now_ms()) - 60_000
    produce(
        dashboard.bootstrap_servers,
        dashboard.topics.telemetry,
        [
            (
                f"T10{t}",
                reading(
                    f"T10{t}",
                    seq,
                    at_ms=start_ms,
                    engine_temp=80.0 + t + seq % 7,
                    bearing_left_temp=40.0 + seq / 3,
                    speed=60.0,
                ),
            )
            for seq in range(60)
            for t in range(1, trains + 1)
        ],
    )
    produce(
        dashboard.bootstrap_servers,
        dashboard.topics.device_status,
        [(f"T10{t}/42", b'{"state": "online"}') for t in range(1, trains + 1)],
    )
    produce(
        dashboard.bootstrap_servers, dashboard.topics.maintenance, [("T103", flag("T103", True))]
    )
    return start_ms


def _alerts(dashboard: Dashboard, events: list[bytes]) -> None:
    """Alert events in one committed transaction, as the alert service writes them."""
    producer = Producer(
        {"bootstrap.servers": dashboard.bootstrap_servers, "transactional.id": f"desk-{_now_ms()}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for event in events:
        producer.produce(
            dashboard.topics.alerts, key=json.loads(event)["key"].encode(), value=event
        )
    producer.commit_transaction(30)


def _event(train: str, rule: str, severity: str, since_ms: int, **extra: Any) -> bytes:
    fields = {
        "key": f"{train}/{rule}/42/bearing_left_temp",
        "state": "firing",
        "rule": rule,
        "severity": severity,
        "ts_ms": since_ms,
        "since_ms": since_ms,
        "message": f"{rule} message",
        **extra,
    }
    return alert(train, **fields)


def _sign_in(page: Page, token: str) -> None:
    page.click("#who")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#login-password", token)
    page.click("#login-ok")
    expect(page.locator("#who")).to_contain_text("operator")


def _request(url: str, method: str, body: Any, token: str) -> tuple[int, str]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def test_alerts_by_severity_then_age_with_units_plain_lines_and_dates(
    dashboard: Dashboard, page: Page
) -> None:
    start_ms = _fleet(dashboard, trains=2)
    now = _now_ms()
    # T101's bearing read 136 degC when bearing_critical fired: 111.4 over ambient.
    fired_ms = start_ms + 61_000
    produce(
        dashboard.bootstrap_servers,
        dashboard.topics.telemetry,
        [("T101", reading("T101", 61, at_ms=start_ms, bearing_left_temp=136.0, ambient_temp=24.6))],
    )
    _alerts(
        dashboard,
        [
            _event("T102", "engine_hot", "warning", now - 300_000),
            _event(
                "T101",
                "bearing_critical",
                "critical",
                fired_ms,
                value=111.4,
                threshold=111.0,
                runbook="stop and inspect",
            ),
            _event("T102", "vibration_high", "warning", now - 20_000),
        ],
    )
    page.goto(dashboard.url)
    items = page.locator("#alerts .alert")
    expect(items).to_have_count(3)
    keys = [items.nth(i).get_attribute("data-key") for i in range(3)]
    assert keys == [
        "T101/bearing_critical/42/bearing_left_temp",  # critical first
        "T102/vibration_high/42/bearing_left_temp",  # then the newest warning
        "T102/engine_hot/42/bearing_left_temp",
    ]
    first = items.nth(0)
    expect(first.locator(".alert-line")).to_have_text(
        "Left axle-box bearing 136 degC, 111 over ambient - stop and inspect"
    )
    expect(first.locator(".reading")).to_have_text("111 degC")
    expect(first.locator(".in-alarm")).to_have_text("bearing_left_temp")
    stamp = first.locator(".alert-foot time.stamp").inner_text()
    assert DATE.match(stamp), stamp
    age = items.nth(1).locator(".alert-foot time[data-ms]")
    expect(age).to_have_text(re.compile(r"^\d+ s ago$"))
    expect(items.nth(2).locator(".alert-foot time[data-ms]")).to_have_text(
        re.compile(r"^5 min ago$")
    )
    assert [a["key"] for a in dashboard.get("/api/alerts")["alerts"]] == keys


def test_train_chart_draws_rule_levels_and_alert_marks(dashboard: Dashboard, page: Page) -> None:
    start_ms = _fleet(dashboard, trains=1)
    key = "T101/bearing_hot_absolute/42/bearing_left_temp"
    fired_ms, acked_ms = start_ms + 30_000, start_ms + 45_000
    _alerts(
        dashboard,
        [
            _event("T101", "bearing_hot_absolute", "warning", fired_ms, key=key),
            _event(
                "T101",
                "bearing_hot_absolute",
                "warning",
                fired_ms,
                key=key,
                state="acknowledged",
                ts_ms=acked_ms,
                acked_by="Ana",
                acked_at_ms=acked_ms,
            ),
        ],
    )
    levels = dashboard.get("/api/rules")["channels"]["bearing_left_temp"]
    assert {
        "rule": "bearing_hot_absolute",
        "severity": "warning",
        "side": "above",
        "level": 120.0,
        "clear": 105.0,
        "relative_to": None,
    } in levels

    page.goto(f"{dashboard.url}#/train/T101")
    chart = page.locator('.chart[data-channel="bearing_left_temp"]')
    expect(chart.locator("canvas")).to_have_count(1)
    expect(page.locator('.channel[data-channel="bearing_left_temp"]')).to_have_class(
        re.compile(r"\balarm\b")
    )
    expect(page.locator('.channel[data-channel="bearing_left_temp"] .value')).to_have_text(
        "59.7 degC"
    )
    drawn = page.evaluate(
        """() => { const c = charts.get("bearing_left_temp"); const p = c.plot;
        const LEVEL = "bearing_hot_absolute above 120";
        return { labels: p.series.map((s) => s.label), rows: p.data.map((r) => r.length),
                 level: p.data[p.series.findIndex((s) => s.label === LEVEL)],
                 marks: c.marks.map((m) => m.label), span: p.scales.x.max - p.scales.x.min,
                 empty: p.series.filter((s, i) => p.data[i].every((v) => v === null))
                   .map((s) => s.label) }; }"""
    )
    assert "bearing_hot_absolute above 120" in drawn["labels"]
    assert "bearing_hot_absolute clears at 105" in drawn["labels"]
    assert set(drawn["level"]) == {120}
    assert drawn["rows"][0] == 62  # 60 readings and the two ends of the time axis
    assert {"bearing_hot_absolute start", "bearing_hot_absolute ack"} <= set(drawn["marks"])
    assert abs(drawn["span"] - 3600) < 5  # the last hour by default
    # Relative to ambient: no line on a train without ambient_temp readings.
    assert "bearing_critical above 111 over ambient_temp" in drawn["empty"]
    assert drawn["labels"][1] not in drawn["empty"]

    produce(
        dashboard.bootstrap_servers,
        dashboard.topics.telemetry,
        [("T101", reading("T101", 60, at_ms=start_ms, bearing_left_temp=71.5))],
    )
    expect(page.locator('.channel[data-channel="bearing_left_temp"] .value')).to_have_text(
        "71.5 degC"
    )
    wait_until(
        lambda: page.evaluate('charts.get("bearing_left_temp").plot.data[0].length') == 63,
        10,
        "the chart got the new reading",
    )
    assert page.evaluate('charts.get("bearing_left_temp").element.isConnected')
    page.screenshot(path=LOG_ROOT / "dashboard-train-chart.png", full_page=True)


@contextmanager
def _streaming(dashboard: Dashboard) -> Iterator[None]:
    """Readings of T101 and T102 every 50 ms until the block ends: a live page changes
    several times a second meanwhile."""
    stop = threading.Event()

    def run() -> None:
        producer = Producer({"bootstrap.servers": dashboard.bootstrap_servers})
        seq = 1000
        while not stop.is_set():
            for train in ("T101", "T102"):
                value = reading(
                    train, seq, at_ms=_now_ms() - seq * 1000, engine_temp=80.0 + seq % 9
                )
                producer.produce(dashboard.topics.telemetry, key=train.encode(), value=value)
            producer.flush(5)
            seq += 1
            stop.wait(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def test_a_click_during_live_updates_is_not_lost(dashboard: Dashboard, page: Page) -> None:
    _fleet(dashboard, trains=2)
    key = "T102/bearing_hot/42/bearing_left_temp"
    _alerts(dashboard, [alert("T102", "firing", ts_ms=_now_ms(), since_ms=_now_ms())])
    page.goto(dashboard.url)
    _sign_in(page, dashboard.token)
    button = page.locator(f'.alert[data-key="{key}"] button.act')
    expect(button).to_have_text("Acknowledge")
    page.evaluate(
        f"window.heldButton = document.querySelector('.alert[data-key=\"{key}\"] button.act')"
    )
    with _streaming(dashboard):
        seen = page.locator('.train[data-train="T102"] .seen time').inner_text()
        wait_until(
            lambda: (
                page.locator('.train[data-train="T102"] .seen time').get_attribute("data-ms")
                != str(seen)
                and page.evaluate("window.heldButton.isConnected")
            ),
            20,
            "T102's row updated live while its alert's button stayed the same element",
        )
        # Mouse down, 600 ms (two or three updates), mouse up: the click still counts.
        button.click(delay=600)
        expect(button).to_have_text("Ack sent…")
    [(action_key, action)] = read_actions(
        dashboard.bootstrap_servers, dashboard.topics.operator_actions, 1
    )
    assert (action_key, action["action"]) == (key, "ack")


def test_export_lists_flagged_trains_with_alerts_acks_and_clears(dashboard: Dashboard) -> None:
    _fleet(dashboard, trains=3)
    at = 1_767_225_600_000  # the flag's time (records.NOW)
    acked = _event(
        "T103",
        "bearing_hot",
        "warning",
        at + 1000,
        key="T103/bearing_hot/42/bearing_left_temp",
        state="acknowledged",
        acked_by="Ana",
        acked_at_ms=at + 5000,
        value=131.2,
        description="Axle-box bearing hot",
        runbook="stop and inspect",
    )
    cleared = _event(
        "T103",
        "engine_hot",
        "warning",
        at + 2000,
        state="resolved",
        ts_ms=at + 9000,
        cleared_by="Bo",
        cleared_at_ms=at + 9000,
        value=96.0,
        sensor="engine_temp",
        key="T103/engine_hot/42/engine_temp",
    )
    _alerts(dashboard, [acked, cleared, _event("T101", "engine_hot", "warning", at)])
    wait_until(lambda: len(dashboard.get("/api/alerts?all=1")["alerts"]) == 3, 30, "alerts read")

    report = dashboard.get("/api/maintenance.json")
    [train] = report["trains"]  # T101 has an alert but no flag: not in it
    assert (train["train_id"], train["flagged"], train["flagged_since_ms"]) == ("T103", True, at)
    assert train["values"]["engine_temp"] > 0
    by_key = {a["key"]: a for a in train["alerts"]}
    first = by_key["T103/bearing_hot/42/bearing_left_temp"]
    assert (first["acked_by"], first["acked_at_ms"], first["unit"]) == ("Ana", at + 5000, "degC")
    assert first["headline"] == "Left axle-box bearing 131 degC over ambient - stop and inspect"
    second = by_key["T103/engine_hot/42/engine_temp"]
    assert (second["state"], second["cleared_by"], second["cleared_at_ms"]) == (
        "resolved",
        "Bo",
        at + 9000,
    )

    content_type, text = dashboard.text("/api/maintenance.csv")
    assert content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(text)))
    # Most severe first, then the newest: engine_hot began a second after bearing_hot.
    assert [(r["train_id"], r["alert_key"]) for r in rows] == [
        ("T103", "T103/engine_hot/42/engine_temp"),
        ("T103", "T103/bearing_hot/42/bearing_left_temp"),
    ]
    rows.reverse()
    assert rows[0]["flagged_at"] == "2026-01-01T00:00:00+00:00"
    assert (rows[0]["value"], rows[0]["unit"], rows[0]["acknowledged_by"]) == (
        "131.2",
        "degC",
        "Ana",
    )
    assert rows[0]["acknowledged_at"] == "2026-01-01T00:00:05+00:00"
    assert (rows[1]["cleared_by"], rows[1]["cleared_at"]) == ("Bo", "2026-01-01T00:00:09+00:00")
    assert rows[0]["runbook"] == "stop and inspect"


def test_maintenance_window_is_an_alertmanager_silence(
    windowed_dashboard: tuple[Dashboard, AlertmanagerHandle], page: Page
) -> None:
    dashboard, manager = windowed_dashboard
    _fleet(dashboard, trains=3)
    page.goto(f"{dashboard.url}#/train/T103")
    _sign_in(page, dashboard.token)
    until = datetime.now() + timedelta(hours=2)  # the browser's time zone is this machine's
    page.fill("#window-until", until.strftime("%Y-%m-%dT%H:%M"))
    page.fill("#window-comment", "wheelset change")
    page.click("#window-set")
    section = page.locator("#window")
    expect(section).to_contain_text("in the depot")
    expect(section).to_contain_text("set by operator: wheelset change")
    expect(section.locator("time.stamp")).to_have_text(re.compile(DATE.pattern))

    def silences() -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{manager.url}/api/v2/silences", timeout=10) as response:
            return [s for s in json.load(response) if s["matchers"][0]["value"] == "T103"]

    [silence] = silences()
    assert silence["status"]["state"] == "active"
    assert silence["matchers"] == [
        {"name": "train", "value": "T103", "isRegex": False, "isEqual": True}
    ]
    assert (silence["createdBy"], silence["comment"]) == ("operator", "wheelset change")
    ends = datetime.fromisoformat(silence["endsAt"]).timestamp()
    assert abs(ends - until.replace(second=0, microsecond=0).timestamp()) < 1
    [train] = [t for t in dashboard.get("/api/fleet")["trains"] if t["train_id"] == "T103"]
    assert train["maintenance_window"]["id"] == silence["id"]
    [(_key, action)] = read_actions(
        dashboard.bootstrap_servers, dashboard.topics.operator_actions, 1
    )
    assert (action["action"], action["silence_id"]) == ("maintenance_window", silence["id"])

    page.click("text=← Fleet")
    expect(page.locator('.train[data-train="T103"] .badge.window')).to_contain_text(
        "in depot until"
    )
    page.screenshot(path=LOG_ROOT / "dashboard-window.png", full_page=True)
    page.goto(f"{dashboard.url}#/train/T103")
    page.click("#window button.act")
    expect(page.locator("#window-set")).to_be_visible()
    wait_until(lambda: silences()[0]["status"]["state"] == "expired", 10, "the silence expired")
    assert dashboard.get("/api/trains/T103")["maintenance_window"] is None

    # Alertmanager away: the page says so and keeps showing the fleet.
    manager.stop()
    page.click("text=← Fleet")
    expect(page.locator("#windows-error")).to_contain_text("does not answer", timeout=20_000)
    expect(page.locator('.train[data-train="T101"]')).to_be_visible()
    assert dashboard.get("/api/fleet")["maintenance_windows_error"]


def test_without_alertmanager_windows_are_hidden_and_refused(
    dashboard: Dashboard, page: Page
) -> None:
    _fleet(dashboard, trains=3)
    url = f"{dashboard.url}api/trains/T103/maintenance-window"
    status, text = _request(url, "POST", {"until": _now_ms() + 3_600_000}, dashboard.token)
    assert status == 409 and "--alertmanager-url" in text, (status, text)
    page.goto(f"{dashboard.url}#/train/T103")
    expect(page.locator("#maintenance")).to_be_visible()
    expect(page.locator("#window")).to_have_count(0)


def test_phone_reaches_the_fleet_and_nothing_overflows(
    dashboard: Dashboard, browser: Browser
) -> None:
    _fleet(dashboard, trains=3)
    now = _now_ms()
    long_key = "T102/bearing_difference/42/bearing_left_temp-bearing_right_temp" + "-x" * 30
    events = [_event("T102", f"rule{i}", "warning", now - i * 1000) for i in range(6)]
    events.append(_event("T102", "bearing_difference", "critical", now, key=long_key))
    _alerts(dashboard, events)
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    context.set_default_timeout(30_000)
    phone = context.new_page()
    try:
        phone.goto(dashboard.url)
        expect(phone.locator("#all-alerts")).to_have_text("Show all 7 alerts")
        box = phone.locator("#fleet").bounding_box()
        assert box is not None and box["y"] < 844, box  # on the first screen, no scrolling
        phone.click("#to-fleet")
        expect(phone.locator('.train[data-train="T103"]')).to_be_in_viewport()
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        phone.click("#all-alerts")
        expect(phone.locator("#alerts .alert")).to_have_count(7)
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        phone.goto(f"{dashboard.url}#/train/T102")
        expect(phone.locator(".chart canvas")).to_have_count(3)
        expect(phone.locator(f'.alert[data-key="{long_key}"]')).to_be_visible()
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        phone.screenshot(path=LOG_ROOT / "dashboard-train-phone.png", full_page=True)
    finally:
        context.close()
