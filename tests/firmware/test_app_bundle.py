"""The application bundle (gateway/firmware_bundle.py): every file the boards need."""

from __future__ import annotations

import pytest

from gateway.firmware_bundle import BOARDS, BundleError, bundle


@pytest.mark.parametrize("board", BOARDS)
def test_bundle_files_exist_and_include_umqtt(board: str) -> None:
    files = bundle(board)
    targets = [f.target for f in files]
    assert all(f.source.is_file() for f in files)
    assert {"main.py", "app.py", "wire.py", "lib/umqtt/simple.py"} <= set(targets)
    assert len(targets) == len(set(targets))
    assert ("board.json" in targets) == (board != "unix")
    assert ("model.py" in targets) == (board == "unix")


def test_unknown_board() -> None:
    with pytest.raises(BundleError, match="unknown board 'arduino'"):
        bundle("arduino")
