"""Types of firmware/model.py (plain MicroPython-compatible code without annotations)."""

FAULTS: tuple[str, ...]
# Internals that gateway.simulate.device.HeldTrainModel (a held, cooling train) builds on.
_STOP: int
_ENGINE_HOT: int
_ENGINE_TAU_S: int
_BEARING_TAU_S: int

class TrainModel:
    fault: str | None
    fault_start_s: float
    t: float
    speed: float
    engine: float
    ambient: float
    _fault: int
    _phase: int
    _phase_left: float
    _extra_left: float
    _vibration_factor: float
    def __init__(self, seed: int, fault: str | None = None, fault_start_s: float = 0.0) -> None: ...
    def step(self, dt_s: float) -> None: ...
    def values(self) -> dict[str, float | None]: ...
