"""Board data and wiring validation (gateway/hardware.py over hardware/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway import hardware
from gateway.cli import app
from gateway.hardware import HardwareError, Wiring, check, load_board, load_wiring


def _rewired(board: str, **pins: dict[str, Any]) -> Wiring:
    data = json.loads((hardware.HARDWARE / "wiring" / f"{board}.json").read_text())
    for role, change in pins.items():
        data["pins"][role].update(change)
    return Wiring.model_validate(data)


def _messages(board: str, level: str, **pins: dict[str, Any]) -> list[str]:
    findings = check(load_board(board), _rewired(board, **pins))
    return [f.message for f in findings if f.level == level]


@pytest.mark.parametrize("board", hardware.boards())
def test_shipped_wiring_is_clean(board: str) -> None:
    assert check(load_board(board), load_wiring(board)) == []


def test_both_boards_are_defined() -> None:
    assert hardware.boards() == ["esp32-devkitc", "pico-w"]


def test_pin_conflict_is_an_error() -> None:
    errors = _messages("esp32-devkitc", "error", onewire={"pin": 21})
    assert errors == ["GPIO 21 (i2c.sda) is already used by onewire.pin: give each its own pin"]


def test_flash_pin_is_an_error() -> None:
    errors = _messages("esp32-devkitc", "error", speed_pulse={"pin": 6})
    assert len(errors) == 1 and "SPI flash" in errors[0] and "GPIO 6" in errors[0]


def test_input_only_pin_driving_a_line_is_an_error() -> None:
    errors = _messages("esp32-devkitc", "error", onewire={"pin": 34}, supply_adc={"pin": 32})
    assert len(errors) == 1 and "input-only" in errors[0] and "onewire.pin" in errors[0]


def test_input_only_pin_as_input_is_fine() -> None:
    assert _messages("esp32-devkitc", "error", speed_pulse={"pin": 39}) == []


def test_strapping_pin_is_a_warning() -> None:
    warnings = _messages("esp32-devkitc", "warning", status_led={"pin": 2})
    assert len(warnings) == 1 and "GPIO 2 (status_led.pin) is a strapping pin" in warnings[0]
    assert _messages("esp32-devkitc", "error", status_led={"pin": 2}) == []


def test_flash_voltage_strapping_pin_with_a_pull_up_is_an_error() -> None:
    errors = _messages("esp32-devkitc", "error", onewire={"pin": 12})
    assert len(errors) == 1 and "flash voltage" in errors[0]


def test_adc_needs_an_adc1_pin() -> None:
    errors = _messages("esp32-devkitc", "error", supply_adc={"pin": 25})
    assert len(errors) == 1 and "not an ADC pin" in errors[0]


def test_pico_wireless_pins_are_reserved() -> None:
    errors = _messages("pico-w", "error", speed_pulse={"pin": 24})
    assert len(errors) == 1 and "wireless chip" in errors[0]


def test_unknown_pin_and_named_pin_on_the_wrong_board() -> None:
    errors = _messages("esp32-devkitc", "error", speed_pulse={"pin": 40}, status_led={"pin": "LED"})
    assert any("does not exist" in e for e in errors)
    assert any("pin LED" in e for e in errors)


def test_probe_channels_must_be_wire_channels() -> None:
    errors = _messages("pico-w", "error", onewire={"probes": ["engine_temp", "oil_temp"]})
    assert len(errors) == 1 and "'oil_temp' is not a channel" in errors[0]


def test_broken_files_raise_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "boards").mkdir()
    (tmp_path / "wiring").mkdir()
    (tmp_path / "boards" / "x.json").write_text("{not json")
    (tmp_path / "wiring" / "x.json").write_text(json.dumps({"board": "x", "pins": {}}))
    monkeypatch.setattr(hardware, "HARDWARE", tmp_path)
    with pytest.raises(HardwareError, match="not valid JSON"):
        load_board("x")
    with pytest.raises(HardwareError, match=r"pins\.onewire: Field required"):
        load_wiring("x")
    with pytest.raises(HardwareError, match="missing: known boards are x"):
        load_board("nope")


def test_bom_has_a_part_number_for_every_line() -> None:
    bom = hardware.load_bom()
    assert bom and all(line["part_number"] and int(line["qty"]) > 0 for line in bom)
    numbers = " ".join(line["part_number"] for line in bom)
    assert "1727" in numbers and "DS18B20" in numbers  # the probes the firmware reads


def test_cli_check_and_show() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["hardware", "check"])
    assert result.exit_code == 0, result.output
    assert "esp32-devkitc: wiring OK" in result.output and "pico-w: wiring OK" in result.output
    result = runner.invoke(app, ["hardware", "show", "esp32-devkitc"])
    assert result.exit_code == 0 and "speed_pulse.pin" in result.output


def test_cli_check_fails_on_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = _rewired("pico-w", speed_pulse={"pin": 24})
    monkeypatch.setattr("gateway.cli.hardware.load_wiring", lambda _board: bad)
    result = CliRunner().invoke(app, ["hardware", "check", "pico-w"])
    assert isinstance(result.exception, HardwareError)
    assert "wireless chip" in result.output
