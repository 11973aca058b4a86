"""The device inventory: the model alone (gateway/dashboard/inventory.py), then the page
(#/devices) and GET /api/devices against the real Kafka, in Chromium."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Page, expect

from gateway.dashboard.inventory import Inventory
from tests.fixtures.waiting import wait_until
from tests.gateway.dashboard.conftest import Dashboard
from tests.gateway.dashboard.records import produce


def _status(**fields: object) -> bytes:
    """A device status as the firmware sends it (docs/architecture.md)."""
    status = {"state": "online", "boot_id": 7, "seq": 10, "dropped": 0, "outbox": 0,
              "uptime_s": 3700, "fw": "1.0.0", "app": "1.0.0", "slot": "a",
              "board": "esp32-devkitc", "cfg": 0, "heap": 61000}
    return json.dumps({**status, **fields}).encode()


def _desired(version: int) -> bytes:
    return json.dumps({"version": version, "config": {"sample_ms": 500, "enable": {}}}).encode()


def _devices(dashboard: Dashboard) -> None:
    """Three devices of two trains: one drifting, one in step, one without a desired config."""
    produce(dashboard.bootstrap_servers, dashboard.topics.device_status, [
        ("T201/1", _status(app="1.2.0", slot="b", rssi=-61, cfg=1, outbox=3, dropped=2)),
        ("T201/2", _status(app="1.1.0", board="pico-w", rssi=-70, cfg=2)),
        ("T301/5", _status(board="unix", uptime_s=42, heap=80000)),
    ])
    produce(dashboard.bootstrap_servers, dashboard.topics.device_config, [
        ("T201/1", _desired(2)),
        ("T201/2", _desired(2)),
    ])


def _column(page: Page, col: str) -> list[str]:
    return page.locator(f"#device-rows td[data-col={col}]").all_inner_texts()


def test_an_offline_device_keeps_its_last_status_and_the_newest_rollout_shows() -> None:
    inventory = Inventory()
    assert inventory.apply_status(b"T1/1", _status(rssi=-50, cfg=1), 1000)
    assert inventory.apply_config(b"T1/1", _desired(1), 1001)
    assert inventory.apply_status(b"T1/1", b'{"state": "offline"}', 5000)  # the last will
    row = inventory.devices()[0]
    assert (row["state"], row["rssi"], row["last_seen_ms"], row["config_drift"]) == (
        "offline", -50, 1000, False)
    progress = {"rollout": "r2", "train_id": "T1", "device_id": 1, "gateway": "g", "wave": 1,
                "state": "fetching", "at": 20.0}
    assert inventory.apply_ota(b"r2/T1/1", json.dumps(progress).encode(), 0)
    older = {**progress, "rollout": "r1", "state": "confirmed", "at": 10.0}
    assert inventory.apply_ota(b"r1/T1/1", json.dumps(older).encode(), 0)  # read later
    assert inventory.devices()[0]["ota"]["rollout"] == "r2"
    assert inventory.apply_ota(b"r1/T1/1", None, 0)  # another rollout's tombstone
    assert inventory.devices()[0]["ota"]["state"] == "fetching"
    assert inventory.apply_ota(b"r2/T1/1", None, 0)
    assert inventory.devices()[0]["ota"] is None
    assert [r["key"] for r in inventory.take_changes()] == ["T1/1"]
    assert inventory.take_changes() == []
    for key, value in [(b"T1", _status()), (b"T1/x", _status()), (b"T1/2", b"[1]"),
                       (b"T1/2", b"not json"), (None, _status())]:
        assert not inventory.apply_status(key, value, 0)
    assert not inventory.apply_config(b"T1/2", b'{"version": 0, "config": {}}', 0)
    assert inventory.rejected == 6


@pytest.mark.integration
def test_api_lists_every_device_with_its_fields_and_drift(dashboard: Dashboard) -> None:
    _devices(dashboard)
    def rows() -> list[dict[str, object]]:
        return list(dashboard.get("/api/devices")["devices"])

    wait_until(lambda: [r["config_desired"] for r in rows()] == [2, 2, None], 30,
               "three devices in /api/devices, two with a desired config")
    devices = rows()
    first = devices[0]
    assert (first["key"], first["app"], first["slot"], first["rssi"], first["board"]) == (
        "T201/1", "1.2.0", "b", -61, "esp32-devkitc")
    assert (first["cfg"], first["config_desired"], first["config_drift"]) == (1, 2, True)
    assert devices[1]["config_drift"] is False
    assert devices[2]["config_desired"] is None and devices[2]["config_drift"] is False
    assert devices[2]["rssi"] is None and devices[2]["last_seen_ms"] > 0


@pytest.mark.integration
def test_inventory_page_sorts_filters_shows_drift_and_updates_live(
    dashboard: Dashboard, page: Page
) -> None:
    _devices(dashboard)
    page.goto(dashboard.url)
    page.click("#nav-devices")  # linked from the header
    expect(page.locator("#device-rows tr")).to_have_count(3)
    assert _column(page, "train_id") == ["T201", "T201", "T301"]
    assert _column(page, "rssi") == ["-61 dBm", "-70 dBm", "-"]  # the unix board has none
    assert _column(page, "uptime_s")[0] == "1 h 1 min"
    assert _column(page, "heap")[2] == "78.1 KB"
    drifting = page.locator("#device-rows tr.drifting")
    expect(drifting).to_have_count(1)
    expect(drifting.locator("td[data-col=config_drift]")).to_have_text("drift v1 → v2")
    expect(page.locator("#devices h2")).to_have_text("Devices (3, 1 with config drift)")

    page.click("[data-act=sort-app]")
    assert _column(page, "app") == ["1.0.0", "1.1.0", "1.2.0"]
    page.click("[data-act=sort-app]")  # again: the other way round
    assert _column(page, "app") == ["1.2.0", "1.1.0", "1.0.0"]
    expect(page.locator("th[aria-sort=descending]")).to_have_text("App ▼")

    page.fill("#device-filter", "1.1")
    expect(page.locator("#device-rows tr")).to_have_count(1)
    assert _column(page, "device_id") == ["2"]
    page.fill("#device-filter", "t301")  # a train, in any case
    expect(page.locator("#device-rows tr")).to_have_count(1)
    row = page.locator("#device-rows tr").first
    handle = row.element_handle()

    # Live: the device reports the desired version; its row is patched, the filter kept.
    produce(dashboard.bootstrap_servers, dashboard.topics.device_config, [("T301/5", _desired(1))])
    expect(row.locator("td[data-col=config_drift]")).to_have_text("drift v0 → v1")
    produce(dashboard.bootstrap_servers, dashboard.topics.device_status,
            [("T301/5", _status(board="unix", cfg=1))])
    expect(row.locator("td[data-col=config_drift]")).to_have_text("v1")
    assert page.input_value("#device-filter") == "t301"
    assert page.evaluate("(el) => el.isConnected", handle), "the row was replaced, not patched"


@pytest.mark.integration
def test_device_fields_are_text_not_markup(dashboard: Dashboard, page: Page) -> None:
    produce(dashboard.bootstrap_servers, dashboard.topics.device_status,
            [("T401/9", _status(app="<img src=x onerror=alert(1)>", board="<b>x</b>"))])
    page.goto(f"{dashboard.url}#/devices")
    expect(page.locator("#device-rows td[data-col=app]")).to_have_text(
        "<img src=x onerror=alert(1)>")
    assert page.locator("#device-rows img, #device-rows b").count() == 0
