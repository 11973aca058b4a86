# Types of firmware/wire.py for CPython callers (the firmware itself stays unannotated).
VERSION: int
FLAG_WALL_CLOCK: int
CHANNELS: tuple[tuple[str, str, int], ...]
CHANNEL_IDS: dict[str, int]
HEADER: str
HEADER_SIZE: int
MAX_FRAME: int
MAX_TIMESTAMP: int

class WireError(ValueError): ...

def encode(
    device_id: int,
    boot_id: int,
    seq: int,
    timestamp_ms: int,
    values: dict[str, int],
    flags: int = ...,
) -> bytes: ...
def scale(name: str) -> int: ...
