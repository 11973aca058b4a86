"""Password hashes and the private files that hold them.

Shared by the device registry (`gateway.registry`) and the dashboard's operator accounts
(`gateway.dashboard.accounts`): one hash format and one way of writing a file of hashes.
Passwords are stored as PBKDF2-SHA512 hashes in Mosquitto's `$7$` format, so the device
registry can drive Mosquitto's password file directly. Each hash records its iteration count,
so hashes made with an older count keep verifying.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from gateway.mosquitto import share_with_mosquitto

__all__ = ["ITERATIONS", "hash_password", "verify_password", "write_private"]

# OWASP's Password Storage Cheat Sheet (since 2023): PBKDF2-HMAC-SHA512 210,000 iterations
# (600,000 is its figure for SHA-256, whose rounds are cheaper; the `$7$` format is SHA-512).
# Hashes made before with 1,000 still verify: each records its own count. Measured: 172 ms a
# derivation on the 2-core build machine, about 0.5 s estimated on a Raspberry Pi 4.
ITERATIONS = 210_000


def hash_password(password: str, iterations: int = ITERATIONS) -> str:
    """A Mosquitto-compatible `$7$` PBKDF2-SHA512 hash with a random salt."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """True if `password` matches a `$7$` hash, compared in constant time."""
    try:
        _, kind, iterations, salt, digest = stored.split("$")
        if kind != "7":
            return False
        computed = hashlib.pbkdf2_hmac(
            "sha512", password.encode(), base64.b64decode(salt), int(iterations)
        )
        return hmac.compare_digest(computed, base64.b64decode(digest))
    except ValueError:
        return False


def write_private(path: Path, text: str, for_mosquitto: bool = False) -> bool:
    """Write atomically, readable by the owner only (the files hold password hashes), or also
    by the `mosquitto` group (`for_mosquitto`, when possible: then True is returned).

    The mode and group are set before the rename, so a reloading reader (Mosquitto, the
    dashboard) never sees the new file unreadable or half written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a leftover could carry another owner's group and mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    shared = for_mosquitto and share_with_mosquitto(fd)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    return shared
