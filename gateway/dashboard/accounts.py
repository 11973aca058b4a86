"""Operator accounts for the dashboard: the users file, who a request is, and sessions.

The users file is YAML, one entry per person, managed with `trackside users add|remove|list`:

    users:
      - name: ana
        role: operator          # viewer: reads only; operator: also acknowledges and clears
        password_hash: $7$...   # PBKDF2-SHA512 (gateway.credentials), never the password

The dashboard re-reads the file when it changes, so a removed account or a changed role takes
effect at its next request, with no restart. Sessions live in the dashboard's memory only: a
restart signs everyone out.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.config import load_yaml_model
from gateway.credentials import hash_password, verify_password, write_private
from gateway.dashboard import DashboardError

__all__ = [
    "MIN_PASSWORD",
    "USER_NAME",
    "AccountsError",
    "Principal",
    "Role",
    "Sessions",
    "User",
    "UsersFile",
]

Role = Literal["viewer", "operator"]
# Letters, digits and . _ @ + -: also the e-mail-like names a single sign-on proxy sends.
USER_NAME = r"^[A-Za-z0-9_.@+-]{1,64}$"
MIN_PASSWORD = 8


class AccountsError(DashboardError):
    """The users file is unreadable or invalid, or a change does not fit it."""


class User(BaseModel):
    """One person who may sign in to the dashboard."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=USER_NAME)
    role: Role
    password_hash: str = Field(pattern=r"^\$7\$")


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    users: list[User] = Field(default_factory=list)


@dataclass(frozen=True)
class Principal:
    """Who a request is: an account name, its role, and how it was recognised."""

    name: str
    role: Role
    via: Literal["session", "header", "token"]

    @property
    def may_act(self) -> bool:
        """True if this principal may acknowledge, clear and change maintenance windows."""
        return self.role == "operator"


class UsersFile:
    """The accounts in one YAML file; every change is written back atomically (mode 600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.users: dict[str, User] = {}
        self.mtime_ns = 0
        # Checked against when a name is unknown, so a wrong name costs what a wrong password
        # costs and the answer's timing does not tell which names exist.
        self._decoy = hash_password(secrets.token_urlsafe(16))
        self._lock = threading.Lock()
        self.reload()

    def reload(self) -> None:
        """Read the file again (a missing file holds no account)."""
        with self._lock:
            if not self.path.exists():
                self.users, self.mtime_ns = {}, 0
                return
            parsed = load_yaml_model(self.path, _File, error=AccountsError, what="users file")
            users: dict[str, User] = {}
            for i, user in enumerate(parsed.users):
                if user.name in users:
                    raise AccountsError(
                        f"{self.path}: users.{i}.name: {user.name!r} is listed twice; "
                        "keep one entry per person"
                    )
                users[user.name] = user
            self.users = users
            self.mtime_ns = self.path.stat().st_mtime_ns

    def reload_if_changed(self) -> None:
        """Pick up changes made by `trackside users ...` while the dashboard runs."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = 0
        if mtime != self.mtime_ns:
            self.reload()

    def authenticate(self, name: str, password: str) -> User | None:
        """The account if the name exists and the password matches (one PBKDF2 derivation,
        about 170 ms: call it off the event loop)."""
        user = self.users.get(name)
        matches = verify_password(password, user.password_hash if user else self._decoy)
        return user if user is not None and matches else None

    def check_new(self, name: str, replace: bool = False) -> None:
        """Raise AccountsError if `add` would refuse `name` (asked before a password prompt)."""
        if name in self.users and not replace:
            raise AccountsError(
                f"{name!r} is already in {self.path}; use --replace to set a new password "
                "and role, or `trackside users remove` first"
            )

    def add(self, name: str, role: Role, password: str, replace: bool = False) -> User:
        """Add an account (or, with `replace`, give an existing one a new password and role)."""
        self.check_new(name, replace)
        if len(password) < MIN_PASSWORD:
            raise AccountsError(f"the password must have at least {MIN_PASSWORD} characters")
        try:
            user = User(name=name, role=role, password_hash=hash_password(password))
        except ValidationError as exc:
            raise AccountsError(
                f"user name {name!r}: use 1-64 letters, digits, '.', '_', '@', '+' or '-'"
            ) from exc
        self.users[name] = user
        self._save()
        return user

    def remove(self, name: str) -> None:
        """Delete an account; its open sessions end at their next request."""
        if self.users.pop(name, None) is None:
            raise AccountsError(
                f"no user {name!r} in {self.path}; `trackside users list` shows them"
            )
        self._save()

    def _save(self) -> None:
        data = {"users": [u.model_dump() for u in self.users.values()]}
        write_private(self.path, yaml.safe_dump(data, sort_keys=False))
        self.mtime_ns = self.path.stat().st_mtime_ns


@dataclass
class _Session:
    principal: Principal
    expires: float


class Sessions:
    """Signed-in browsers: a random id (the cookie) -> who, forgotten after `idle_s` unused.

    At most `limit` are kept; beyond, the least recently used is forgotten (signed out).
    """

    def __init__(
        self, idle_s: float, limit: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.idle_s = idle_s
        self.limit = limit
        self.clock = clock
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, principal: Principal) -> str:
        """A new session for `principal`; returns its id (256 random bits)."""
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = _Session(principal, self.clock() + self.idle_s)
        while len(self._sessions) > self.limit:
            self._sessions.popitem(last=False)
        return session_id

    def get(self, session_id: str) -> Principal | None:
        """Who the session is, and its idle time starts again; None if unknown or expired."""
        session = self._sessions.get(session_id)
        now = self.clock()
        if session is None:
            return None
        if session.expires <= now:
            del self._sessions[session_id]
            return None
        session.expires = now + self.idle_s
        self._sessions.move_to_end(session_id)
        return session.principal

    def drop(self, session_id: str) -> None:
        """Sign a session out (an unknown id is ignored: it is signed out already)."""
        self._sessions.pop(session_id, None)
