"""A 32-bit build of the MicroPython unix port, for heap figures as the boards see them.

The unix port from PyPI is a 64-bit program: pointers, objects and heap blocks take twice the
bytes they take on the ESP32 and the RP2040, which are 32-bit. MicroPython's own CI builds the
unix port for 32-bit x86 too; this does the same for one release, once, into the user cache:
the source comes from the Go module proxy (which serves any GitHub release as a zip) and is
checked by SHA-256. Building needs make and a compiler that can target 32-bit x86 (Debian's
gcc-multilib; `make bench` installs it) and takes about 15 s on two cores.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from gateway.localkafka import cache_dir

__all__ = ["VERSION", "micropython32"]

VERSION = "1.29.0"
SOURCE = f"https://proxy.golang.org/github.com/micropython/micropython/@v/v{VERSION}.zip"
SHA256 = "70f3665f15ad2ff8c8d9a9111fb9eab117ef2167d150470475b42bfaa35be28e"
# The standard variant without what needs git submodules the zip lacks (frozen
# micropython-lib, mbedTLS, Berkeley DB) or a 32-bit libffi; the app uses none of them.
MAKE_ARGS = ["VARIANT=standard", "CFLAGS_EXTRA=-m32", "LDFLAGS_EXTRA=-m32", "FROZEN_MANIFEST=",
             "MICROPY_PY_FFI=0", "MICROPY_PY_BTREE=0", "MICROPY_PY_SSL=0",
             "MICROPY_SSL_MBEDTLS=0"]


def micropython32() -> Path:
    """The 32-bit unix port's `micropython`, built on first use."""
    home = cache_dir() / f"micropython-{VERSION}-unix32"
    binary = home / "micropython"
    if binary.exists():
        return binary
    print(f"building MicroPython {VERSION}'s unix port for 32-bit x86 (once)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = _unpack(Path(tmp))
        result = subprocess.run(
            ["make", "-j2", "-C", str(source / "ports" / "unix"), *MAKE_ARGS],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise SystemExit(
                f"building the 32-bit unix port failed:\n{result.stderr[-2000:]}\n"
                "It needs make and gcc-multilib (Debian: apt-get install gcc-multilib)."
            )
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / "ports" / "unix" / "build-standard" / "micropython", binary)
    return binary


def _unpack(tmp: Path) -> Path:
    with urllib.request.urlopen(SOURCE, timeout=120) as response:
        data = response.read()
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise SystemExit(f"{SOURCE} does not have the expected SHA-256; not building it")
    archive = tmp / "source.zip"
    archive.write_bytes(data)
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp)
    return tmp / "github.com" / "micropython" / f"micropython@v{VERSION}"
