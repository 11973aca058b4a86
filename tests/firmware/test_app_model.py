"""The train model (firmware/model.py) stays physically plausible, faults included."""

from __future__ import annotations

import pytest

from firmware.model import FAULTS, TrainModel


def _run(model: TrainModel, seconds: int) -> list[dict[str, float | None]]:
    out = []
    for _ in range(seconds):
        model.step(1.0)
        out.append(model.values())
    return out


def _series(rows: list[dict[str, float | None]], name: str) -> list[float]:
    return [v for r in rows if (v := r[name]) is not None]


def test_healthy_train_is_plausible() -> None:
    rows = _run(TrainModel(3), 3600)
    speed = _series(rows, "speed")
    assert min(speed) == 0.0 and 80.0 <= max(speed) <= 161.0  # station stops and cruising
    assert 84.0 <= _series(rows, "engine_temp")[-1] <= 91.0  # warmed up, thermostat-held
    ambient = _series(rows, "ambient_temp")[-1]
    assert 10.0 <= _series(rows, "bearing_left_temp")[-1] - ambient <= 40.0
    assert 0.05 <= max(_series(rows, "vibration_rms")) <= 0.7
    assert all(23.0 <= v <= 25.0 for v in _series(rows, "supply_voltage"))


def test_same_seed_same_train() -> None:
    assert _run(TrainModel(9), 50) == _run(TrainModel(9), 50)


@pytest.mark.parametrize(
    ("fault", "seconds", "channel", "check"),
    [
        ("bearing_overheat_gradual", 5400, "bearing_left_temp", lambda v, a: v - a > 150),
        ("bearing_overheat_sudden", 10, "bearing_left_temp", lambda v, a: v - a > 150),
        ("coolant_loss", 900, "engine_temp", lambda v, a: v > 110),
        ("vibration_growth", 1200, "vibration_rms", lambda v, a: v > 1.0),
    ],
)
def test_faults_show(fault: str, seconds: int, channel: str, check: object) -> None:
    model = TrainModel(5, fault, fault_start_s=600.0)
    _run(model, 600)
    rows = _run(model, seconds)
    value, ambient = rows[-1][channel], rows[-1]["ambient_temp"]
    assert value is not None and ambient is not None
    assert callable(check) and check(value, ambient), (fault, value)


def test_sensor_dropout_returns_none() -> None:
    rows = _run(TrainModel(5, "sensor_dropout", fault_start_s=10.0), 20)
    assert all(v is not None for v in rows[5].values())
    assert sum(v is None for v in rows[-1].values()) == 1
    assert set(FAULTS) >= {"sensor_dropout"}


def test_unknown_fault_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        TrainModel(1, "meteor")
