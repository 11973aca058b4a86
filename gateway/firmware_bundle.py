"""Which files the device application needs on a board's filesystem, and where they go.

`bundle(board)` lists them; the device tools compile everything but `main.py` with mpy-cross
and copy it to the board, and the unix-port test fixture lays the same files out in a folder.
micropython-lib's `umqtt.simple` is not vendored: `ensure_umqtt()` fetches it from PyPI once
into the user cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gateway import GatewayError
from gateway.localkafka import cache_dir

__all__ = ["BOARDS", "UMQTT_VERSION", "BundleError", "BundleFile", "bundle", "ensure_umqtt"]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
HARDWARE = ROOT / "hardware"
UMQTT_PACKAGE = "micropython-umqtt.simple"
UMQTT_VERSION = "1.3.4"
UMQTT_SHA256 = "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f"

# slots.py: what main.py runs (slot choice, rollback); ota.py and ed25519.py: the update
# client, which safe mode runs from the root (docs/ota.md).
_COMMON = ("main.py", "slots.py", "app.py", "board.py", "link.py", "outbox.py", "sensors.py",
           "wire.py", "ota.py", "ed25519.py")
# Board name (the "board" key of trackside.json) -> the app modules only that board needs.
BOARDS: dict[str, tuple[str, ...]] = {
    "unix": ("board_unix.py", "sim.py", "model.py"),
    "esp32-devkitc": ("board_wifi.py", "board_esp32.py"),
    "pico-w": ("board_wifi.py", "board_pico_w.py"),
}


class BundleError(GatewayError):
    """The application bundle cannot be assembled."""


@dataclass(frozen=True)
class BundleFile:
    """One file of the bundle: `source` on this machine, `target` relative to the board root."""

    source: Path
    target: str


def bundle(board: str) -> list[BundleFile]:
    """Every file the app needs on `board`'s filesystem, umqtt.simple and pin data included."""
    if board not in BOARDS:
        raise BundleError(f"unknown board {board!r}: use one of {', '.join(BOARDS)}")
    files = [BundleFile(FIRMWARE / name, name) for name in _COMMON + BOARDS[board]]
    files.append(BundleFile(ensure_umqtt(), "lib/umqtt/simple.py"))
    if board != "unix":
        files.append(BundleFile(HARDWARE / "wiring" / f"{board}.json", "board.json"))
    return files


def ensure_umqtt() -> Path:
    """micropython-lib's umqtt/simple.py from PyPI, downloaded once into the user cache."""
    target = cache_dir() / "micropython-lib" / f"umqtt.simple-{UMQTT_VERSION}" / "simple.py"
    if target.exists():
        return target
    sdist = _download_sdist()
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as tar:
        member = f"{UMQTT_PACKAGE}-{UMQTT_VERSION}/umqtt/simple.py"
        extracted = tar.extractfile(member)
        if extracted is None:
            raise BundleError(f"{member} is missing from the {UMQTT_PACKAGE} sdist")
        source = extracted.read()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    partial.write_bytes(source)
    partial.replace(target)
    log.info("umqtt.simple %s cached at %s", UMQTT_VERSION, target)
    return target


def _download_sdist() -> bytes:
    api = f"https://pypi.org/pypi/{UMQTT_PACKAGE}/json"
    try:
        with urllib.request.urlopen(api, timeout=30) as response:
            release = json.load(response)
        files = release["releases"][UMQTT_VERSION]
        url = next(f["url"] for f in files if f["packagetype"] == "sdist")
        with urllib.request.urlopen(url, timeout=60) as response:
            data: bytes = response.read()
    except (OSError, StopIteration, KeyError, ValueError) as exc:
        raise BundleError(
            f"cannot download {UMQTT_PACKAGE} {UMQTT_VERSION} from PyPI ({exc}): check the "
            f"network, or put umqtt/simple.py at {cache_dir()}/micropython-lib/"
            f"umqtt.simple-{UMQTT_VERSION}/simple.py"
        ) from exc
    if hashlib.sha256(data).hexdigest() != UMQTT_SHA256:
        raise BundleError(f"{UMQTT_PACKAGE} {UMQTT_VERSION} from PyPI has an unexpected checksum")
    return data
