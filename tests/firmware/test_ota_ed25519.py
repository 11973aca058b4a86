"""firmware/ed25519.py on the MicroPython unix port: RFC 8032's vectors, signatures made by
`cryptography`, tampered ones refused, and its SHA-512 against hashlib's."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.fixtures.micropython import micropython_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("ed25519_runner.py")
RFC = json.loads((ROOT / "tests" / "vectors" / "rfc8032_ed25519.json").read_text())["vectors"]


def _run(tmp_path: Path, verify: list[dict[str, str]], sha512: list[bytes]) -> list[object]:
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps({"verify": verify, "sha512": [m.hex() for m in sha512]}))
    out = subprocess.run(
        [str(micropython_binary()), str(RUNNER), str(ROOT / "firmware"), str(cases)],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    return [next(iter(json.loads(line).values())) for line in out.splitlines()]


def _case(key: bytes, msg: bytes, sig: bytes) -> dict[str, str]:
    return {"key": key.hex(), "msg": msg.hex(), "sig": sig.hex()}


def test_rfc8032_vectors_verify_and_match_cryptography(tmp_path: Path) -> None:
    for v in RFC:  # the vectors as written down are what an independent implementation makes
        secret = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["secret"]))
        assert secret.public_key().public_bytes_raw().hex() == v["key"]
        assert secret.sign(bytes.fromhex(v["msg"])).hex() == v["sig"]
    cases = [{k: v[k] for k in ("key", "msg", "sig")} for v in RFC]
    assert _run(tmp_path, cases, []) == [True] * len(RFC)


def test_signatures_by_cryptography_verify_and_any_change_is_refused(tmp_path: Path) -> None:
    cases, expected = [], []
    for n in range(12):
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes_raw()
        msg = os.urandom(n * 11)  # 0 to 121 bytes, the update client signs 32
        sig = key.sign(msg)
        other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        flipped = bytearray(sig)
        flipped[n % 64] ^= 1 << (n % 8)
        s_plus_l = (int.from_bytes(sig[32:], "little") + 2**252
                    + 27742317777372353535851937790883648493).to_bytes(32, "little")
        cases += [
            _case(public, msg, sig),
            _case(public, msg + b"x", sig),  # another message
            _case(other, msg, sig),  # another key
            _case(public, msg, bytes(flipped)),  # one bit of the signature
            _case(public, msg, sig[:32] + s_plus_l),  # S + L: the same point, not canonical
        ]
        expected += [True, False, False, False, False]
    assert _run(tmp_path, cases, []) == expected


def test_sha512_matches_hashlib_across_block_boundaries(tmp_path: Path) -> None:
    messages = [os.urandom(n) for n in (0, 1, 55, 111, 112, 127, 128, 129, 239, 240, 256, 300)]
    assert _run(tmp_path, [], messages) == [hashlib.sha512(m).hexdigest() for m in messages]


def test_the_same_file_runs_on_cpython(tmp_path: Path) -> None:
    cases = [{k: v[k] for k in ("key", "msg", "sig")} for v in RFC]
    path = tmp_path / "cases.json"
    path.write_text(json.dumps({"verify": cases, "sha512": []}))
    out = subprocess.run([sys.executable, str(RUNNER), str(ROOT / "firmware"), str(path)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.count("true") == len(RFC)
