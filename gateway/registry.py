"""The device registry: who may connect to the broker, with which password, to which topics.

One YAML file holds every account. A device account may publish only its own telemetry,
status and replies, and read only its own config and commands (and its train's commands); a
service account (the bridge, the simulator, operators' tools) reads and writes the whole
`trackside/` namespace. Passwords are stored as PBKDF2-SHA512 hashes in Mosquitto's `$7$`
format (`gateway.credentials`), so the same registry drives the embedded broker directly and
Mosquitto through the password and ACL files it generates. Plain passwords are shown once,
when created, and never logged.

Each hash records its iteration count, so hashes made with an older count keep verifying. A
successful verification is remembered in memory (`Registry.authenticate`), so a device that
reconnects, or a CONNECT checked twice, costs one derivation per account and password.

Client ids are bound to accounts too: a device may connect only under its own client id (see
`DEVICE_CLIENT_IDS`), so it can neither take over another device's session nor the bridge's.
"""

from __future__ import annotations

import hmac
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.config import load_yaml_model
from gateway import GatewayError
from gateway.credentials import hash_password, verify_password, write_private

__all__ = [
    "DEVICE_CLIENT_IDS",
    "Account",
    "Registry",
    "RegistryError",
    "TopicRule",
    "topic_matches",
]

VERIFIED_MAX = 16_384  # remembered verifications; beyond, the oldest is forgotten
TRAIN_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# The client ids a device account may connect with: the firmware's (firmware/app.py) and the
# simulator's per-device connections (`trackside simulate --credentials`).
DEVICE_CLIENT_IDS = ("trackside-{device_id}", "sim-dev-{device_id}")


class RegistryError(GatewayError):
    """The registry file is unreadable or a request does not fit it."""


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching of a topic (or a narrower filter) against a filter with `+` and `#`."""
    wanted, parts = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(wanted):
        if level == "#":
            return True
        if i >= len(parts) or (level not in ("+", parts[i])):
            return False
    return len(parts) == len(wanted)


@dataclass(frozen=True)
class TopicRule:
    """One ACL line: `read` (subscribe/receive), `write` (publish) or `readwrite`."""

    access: Literal["read", "write", "readwrite"]
    topic: str


class Account(BaseModel):
    """One broker account: a device bound to its train and id, or a service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    username: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    kind: Literal["device", "service"]
    password_hash: str
    train_id: str | None = None
    device_id: int | None = Field(None, ge=0, le=0xFFFFFFFF)
    revoked: bool = False

    def rules(self) -> list[TopicRule]:
        """The topics this account may use."""
        if self.kind == "service":
            return [TopicRule("readwrite", "trackside/#")]
        own = f"trackside/v1/{self.train_id}/{self.device_id}"
        return [
            TopicRule("write", f"{own}/telemetry"),
            TopicRule("write", f"{own}/status"),
            TopicRule("write", f"{own}/reply"),
            TopicRule("read", f"{own}/config"),
            TopicRule("read", f"{own}/cmd"),
            TopicRule("read", f"trackside/v1/{self.train_id}/cmd"),
        ]

    def client_ids(self) -> tuple[str, ...] | None:
        """The client ids this account may use; None for a service account (any id)."""
        if self.kind == "service":
            return None
        return tuple(pattern.format(device_id=self.device_id) for pattern in DEVICE_CLIENT_IDS)

    def may_use_client_id(self, client_id: str | None) -> bool:
        """True if this account may connect under `client_id` (and so own that session).

        Services (bridge, simulator, operators' tools) are trusted with the whole topic tree
        and may use any id; a device only its own, so it cannot take over another session.
        """
        if self.revoked:
            return False
        allowed = self.client_ids()
        return allowed is None or client_id in allowed

    def may(self, access: Literal["read", "write"], topic: str) -> bool:
        """True if this account may read (subscribe to) or write (publish to) `topic`."""
        if self.revoked:
            return False
        return any(
            access in rule.access and topic_matches(rule.topic, topic) for rule in self.rules()
        )


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accounts: list[Account] = Field(default_factory=list)


class Registry:
    """The accounts in one YAML file; every change is written back atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.accounts: dict[str, Account] = {}
        self.mtime_ns = 0
        # Keyed digests of (account, password hash, password) that verified, oldest first. The
        # key lives in this process only: a digest tells nothing about the password.
        self._verified: dict[bytes, None] = {}
        self._verified_key = secrets.token_bytes(32)
        self._verified_lock = threading.Lock()
        self.reload()

    def reload(self) -> None:
        """Read the file again (a missing file is an empty registry)."""
        if not self.path.exists():
            self.accounts, self.mtime_ns = {}, 0
            return
        parsed = load_yaml_model(self.path, _File, error=RegistryError, what="device registry")
        self.accounts = {a.username: a for a in parsed.accounts}
        self.mtime_ns = self.path.stat().st_mtime_ns

    def reload_if_changed(self) -> None:
        """Pick up changes made by `trackside devices ...` while a broker runs."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = 0
        if mtime != self.mtime_ns:
            self.reload()

    def authenticate(self, username: str | None, password: str | None) -> Account | None:
        """The account if the username exists, is not revoked and the password matches.

        A match is remembered, so the same account, hash and password are verified once per
        process: a new password, a new hash or a revocation is never served from memory.
        """
        account = self.accounts.get(username or "")
        if account is None or account.revoked or password is None:
            return None
        parts = (account.username, account.password_hash, password)
        proof = hmac.digest(self._verified_key, "\0".join(parts).encode(), "sha256")
        # A plain lookup: its timing could only tell of keyed digests an attacker cannot make.
        with self._verified_lock:
            if proof in self._verified:
                return account
        if not verify_password(password, account.password_hash):
            return None
        with self._verified_lock:
            self._verified[proof] = None
            if len(self._verified) > VERIFIED_MAX:
                del self._verified[next(iter(self._verified))]
        return account

    def add_device(self, device_id: int, train_id: str, password: str | None = None) -> str:
        """Register a device; returns its plain password (shown once, stored hashed)."""
        if not TRAIN_ID.fullmatch(train_id):  # `$` alone lets "T1\n" through
            raise RegistryError(
                f"train id {train_id!r}: use 1-32 letters, digits, '-' or '_' (e.g. T101)"
            )
        username = f"device-{device_id}"
        return self._add(
            username,
            password,
            lambda hashed: Account(
                username=username,
                kind="device",
                password_hash=hashed,
                train_id=train_id,
                device_id=device_id,
            ),
        )

    def add_service(self, username: str, password: str | None = None, replace: bool = False) -> str:
        """Register a service account (bridge, simulator, tools); returns its plain password.

        `replace` issues new credentials for an existing account (the gateway does this for its
        own bridge at every start, so that password never needs to be stored anywhere).
        """
        if replace and username in self.accounts:
            del self.accounts[username]
        return self._add(
            username,
            password,
            lambda hashed: Account(username=username, kind="service", password_hash=hashed),
        )

    def revoke(self, username: str) -> None:
        """Refuse an account from now on (kept in the file, marked revoked)."""
        account = self.accounts.get(username)
        if account is None:
            raise RegistryError(
                f"no account {username!r} in {self.path}; `trackside devices list` shows them"
            )
        self.accounts[username] = account.model_copy(update={"revoked": True})
        self._save()

    def write_mosquitto_files(self, password_file: Path, acl_file: Path) -> bool:
        """Mosquitto's `password_file` and `acl_file` for the accounts that are not revoked.

        Both are mode 640, group `mosquitto`, when that group exists and this user may give
        files to it (root may), so that Debian's Mosquitto, which drops privileges to user
        `mosquitto`, can read them; otherwise mode 600. Returns True if they are shared so.
        """
        live = [a for a in self.accounts.values() if not a.revoked]
        shared = write_private(
            password_file,
            "".join(f"{a.username}:{a.password_hash}\n" for a in live),
            for_mosquitto=True,
        )
        return (
            write_private(acl_file, "".join(_acl_block(a) for a in live), for_mosquitto=True)
            and shared
        )

    def _add(self, username: str, password: str | None, make: Callable[[str], Account]) -> str:
        current = self.accounts.get(username)
        if current is not None and not current.revoked:
            raise RegistryError(
                f"{username!r} is already registered in {self.path}; "
                "revoke it first to issue new credentials"
            )
        plain = password or secrets.token_urlsafe(18)
        try:
            self.accounts[username] = make(hash_password(plain))
        except ValidationError as exc:
            raise RegistryError(f"{username!r}: {exc.errors()[0]['msg']}") from exc
        self._save()
        return plain

    def _save(self) -> None:
        data = {"accounts": [a.model_dump(exclude_defaults=True) for a in self.accounts.values()]}
        write_private(self.path, yaml.safe_dump(data, sort_keys=False))
        self.mtime_ns = self.path.stat().st_mtime_ns


def _acl_block(account: Account) -> str:
    lines: Iterable[str] = (f"topic {rule.access} {rule.topic}" for rule in account.rules())
    return f"user {account.username}\n" + "\n".join(lines) + "\n\n"
