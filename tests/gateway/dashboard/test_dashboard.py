"""The dashboard against the real Kafka, in Debian's headless Chromium."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Producer
from playwright.sync_api import Browser, Page, expect

from tests.fixtures.processes import LOG_ROOT
from tests.fixtures.waiting import wait_until
from tests.gateway.dashboard.conftest import Dashboard
from tests.gateway.dashboard.records import alert, flag, produce, read_actions, reading

pytestmark = pytest.mark.integration

KEY = "T102/bearing_hot/42/bearing_left_temp"


def _fleet(dashboard: Dashboard, trains: int = 4) -> int:
    """A few trains with readings and device status; T103 flagged; the first reading's time."""
    now_ms = int(time.time() * 1000) - 60_000
    topics = dashboard.topics
    produce(
        dashboard.bootstrap_servers,
        topics.telemetry,
        [
            (
                f"T10{t}",
                reading(
                    f"T10{t}",
                    seq,
                    at_ms=now_ms,
                    engine_temp=80 + t + seq % 7,
                    bearing_left_temp=40.0 + seq / 3,
                    speed=60.0 + (seq * 7) % 11,
                ),
            )
            for seq in range(60)
            for t in range(1, trains + 1)
        ],
    )
    produce(
        dashboard.bootstrap_servers,
        topics.device_status,
        [(f"T10{t}/42", b'{"state": "online"}') for t in range(1, trains + 1)]
        + [("T104/42", b'{"state": "offline"}')],
    )
    produce(dashboard.bootstrap_servers, topics.maintenance, [("T103", flag("T103", True))])
    return now_ms


def _alert_in_transaction(dashboard: Dashboard, event: bytes, key: str) -> Producer:
    """The alert service writes alerts in transactions: do the same, and leave it open."""
    producer = Producer(
        {"bootstrap.servers": dashboard.bootstrap_servers, "transactional.id": f"t-{uuid.uuid4()}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(dashboard.topics.alerts, key=key.encode(), value=event)
    return producer


def _committed_alert(dashboard: Dashboard, event: bytes, key: str = KEY) -> None:
    _alert_in_transaction(dashboard, event, key).commit_transaction(30)


def _aborted_alert(dashboard: Dashboard, event: bytes, key: str) -> None:
    producer = _alert_in_transaction(dashboard, event, key)
    producer.flush(30)
    producer.abort_transaction(30)


def _sign_in(page: Page, token: str) -> None:
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#login-name")).to_be_hidden()  # the token mode records its own name
    page.fill("#login-password", token)
    page.click("#login-ok")


def test_fleet_shows_trains_and_a_firing_alert_arrives_without_reload(
    dashboard: Dashboard, page: Page
) -> None:
    _fleet(dashboard)
    page.goto(dashboard.url)
    for train in ("T101", "T102", "T103", "T104"):
        expect(page.locator(f'.train[data-train="{train}"]')).to_be_visible()
    expect(page.locator('.train[data-train="T103"] .badge.maint')).to_have_text("maintenance")
    expect(page.locator('.train[data-train="T104"] .status')).to_have_text("offline")
    expect(page.locator("#live")).to_have_text("live")
    page.evaluate("window.notReloaded = true")

    # An aborted transaction is never shown (read_committed); the committed alert is.
    _aborted_alert(dashboard, alert("T101", "firing"), "T101/bearing_hot/42/bearing_left_temp")
    now_ms = int(time.time() * 1000)
    _committed_alert(dashboard, alert("T102", "firing", ts_ms=now_ms, since_ms=now_ms - 10_000))
    item = page.locator(f'.alert[data-key="{KEY}"]')
    expect(item).to_contain_text("bearing_left_temp 131.2 degC above 120.0 for 10 s")
    expect(page.locator('.train[data-train="T102"] .badge.alerts')).to_have_text("1 alert")
    assert page.evaluate("window.notReloaded") is True
    assert page.locator(".alert").count() == 1
    assert [a["key"] for a in dashboard.get("/api/alerts")["alerts"]] == [KEY]

    page.screenshot(path=LOG_ROOT / "dashboard.png", full_page=True)


def test_acknowledge_goes_through_kafka_and_shows_who_acknowledged(
    dashboard: Dashboard, page: Page
) -> None:
    _fleet(dashboard, trains=2)
    _committed_alert(dashboard, alert("T102", "firing"))
    page.goto(dashboard.url)
    button = page.locator(f'.alert[data-key="{KEY}"] button.act')
    expect(button).to_have_text("Acknowledge")
    button.click()
    _sign_in(page, dashboard.token)
    expect(button).to_have_text("Ack sent…")

    [(key, action)] = read_actions(
        dashboard.bootstrap_servers, dashboard.topics.operator_actions, 1
    )
    assert key == KEY
    assert action["action"] == "ack"
    assert action["key"] == KEY
    assert action["by"] == "operator"  # the token's --token-operator, never a typed name
    assert abs(action["at_ms"] - time.time() * 1000) < 120_000
    # Not applied locally: still firing until the alert service answers.
    assert dashboard.get("/api/alerts")["alerts"][0]["state"] == "firing"

    _committed_alert(
        dashboard, alert("T102", "acknowledged", acked_by="operator", acked_at_ms=action["at_ms"])
    )
    expect(page.locator(f'.alert[data-key="{KEY}"] .acked')).to_contain_text(
        "acknowledged by operator"
    )
    expect(page.locator(f'.alert[data-key="{KEY}"] button')).to_have_count(0)


def test_clearing_a_flag_produces_a_clear_action_and_shows_the_result(
    dashboard: Dashboard, page: Page
) -> None:
    _fleet(dashboard)
    page.goto(f"{dashboard.url}#/train/T103")
    maintenance = page.locator("#maintenance")
    expect(maintenance).to_contain_text("flagged")
    maintenance.locator("button.act").click()
    _sign_in(page, dashboard.token)

    [(key, action)] = read_actions(
        dashboard.bootstrap_servers, dashboard.topics.operator_actions, 1
    )
    assert (key, action["action"], action["train_id"], action["by"]) == (
        "T103",
        "clear",
        "T103",
        "operator",
    )

    produce(
        dashboard.bootstrap_servers,
        dashboard.topics.maintenance,
        [("T103", flag("T103", False, by="operator"))],
    )
    expect(maintenance).to_contain_text("Cleared by operator")
    page.click("text=← Fleet")
    expect(page.locator('.train[data-train="T103"] .badge.maint')).to_have_count(0)


def test_actions_need_the_token(dashboard: Dashboard) -> None:
    _fleet(dashboard, trains=3)
    _committed_alert(dashboard, alert("T102", "firing"))
    deadline = time.monotonic() + 60
    while not dashboard.get("/api/alerts")["alerts"] and time.monotonic() < deadline:
        time.sleep(0.2)
    ack, clear = f"/api/alerts/{KEY}/ack", "/api/trains/T103/clear"
    for path in (ack, clear):
        assert dashboard.post(path, {}, token=None) == 401
        assert dashboard.post(path, {}, token="wrong") == 401
    assert dashboard.post("/api/alerts/T9/none/x/ack", {}, dashboard.token) == 404
    assert dashboard.post("/api/trains/T9/clear", {}, dashboard.token) == 404
    # A typed name is not what is recorded: the token's operator name is.
    assert dashboard.post(ack, {"by": "Eve"}, dashboard.token) == 202
    actions = read_actions(dashboard.bootstrap_servers, dashboard.topics.operator_actions, 2, 10)
    assert [a["by"] for _, a in actions] == ["operator"]


def test_train_page_draws_charts_and_updates_live(dashboard: Dashboard, page: Page) -> None:
    start_ms = _fleet(dashboard, trains=1)
    page.goto(f"{dashboard.url}#/train/T101")
    channel = page.locator('.channel[data-channel="bearing_left_temp"]')
    expect(channel.locator(".value")).to_have_text("59.7 degC")
    expect(channel.locator(".chart canvas")).to_have_count(1)
    # The readings and the two ends of the time axis.
    points = 'charts.get("bearing_left_temp").plot.data[1].length'
    assert page.evaluate(points) == 62

    produce(
        dashboard.bootstrap_servers,
        dashboard.topics.telemetry,
        [("T101", reading("T101", 60, at_ms=start_ms, bearing_left_temp=71.5))],
    )
    expect(channel.locator(".value")).to_have_text("71.5 degC")
    wait_until(lambda: page.evaluate(points) == 63, 10, "the chart drew the new reading")
    page.screenshot(path=LOG_ROOT / "dashboard-train.png", full_page=True)


def test_phone_layout_shows_the_fleet_without_horizontal_scroll(
    dashboard: Dashboard, browser: Browser
) -> None:
    _fleet(dashboard)
    _committed_alert(dashboard, alert("T102", "firing"))
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone = context.new_page()
    try:
        phone.goto(dashboard.url)
        expect(phone.locator('.train[data-train="T104"]')).to_be_visible(timeout=30_000)
        expect(phone.locator(".alert")).to_have_count(1, timeout=30_000)
        width = phone.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], width
        for train in ("T101", "T104"):
            box = phone.locator(f'.train[data-train="{train}"]').bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
        phone.screenshot(path=LOG_ROOT / "dashboard-phone.png", full_page=True)
        phone.goto(f"{dashboard.url}#/train/T101")
        expect(phone.locator(".channel")).to_have_count(3, timeout=30_000)
        width = phone.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], width
    finally:
        context.close()
