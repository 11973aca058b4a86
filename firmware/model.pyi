"""Types of firmware/model.py (plain MicroPython-compatible code without annotations)."""

FAULTS: tuple[str, ...]

class TrainModel:
    fault: str | None
    fault_start_s: float
    t: float
    speed: float
    def __init__(self, seed: int, fault: str | None = None, fault_start_s: float = 0.0) -> None: ...
    def step(self, dt_s: float) -> None: ...
    def values(self) -> dict[str, float | None]: ...
