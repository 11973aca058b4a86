"""Operator accounts: the users file and its errors, the shared hashing, sessions, the settings
that choose how people sign in, and `trackside users`."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from gateway.cli import build_app
from gateway.credentials import ITERATIONS
from gateway.dashboard.accounts import AccountsError, Principal, Sessions, UsersFile
from gateway.dashboard.config import DashboardConfig


def test_users_are_stored_hashed_private_and_verified(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    users = UsersFile(path)
    users.add("ana", "operator", "correct horse")
    users.add("vic", "viewer", "battery staple")
    text = path.read_text()
    assert "correct horse" not in text and "battery staple" not in text
    assert text.count(f"$7${ITERATIONS}$") == 2  # gateway.credentials' format and count
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    again = UsersFile(path)
    assert {n: u.role for n, u in again.users.items()} == {"ana": "operator", "vic": "viewer"}
    user = again.authenticate("ana", "correct horse")
    assert user is not None and user.role == "operator"
    assert again.authenticate("ana", "battery staple") is None
    assert again.authenticate("nobody", "correct horse") is None

    again.remove("vic")
    assert list(UsersFile(path).users) == ["ana"]


def test_adding_twice_needs_replace_and_bad_input_says_what_to_do(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "users.yaml")
    users.add("ana", "viewer", "correct horse")
    with pytest.raises(AccountsError, match="--replace"):
        users.add("ana", "operator", "another one")
    users.add("ana", "operator", "another one", replace=True)
    assert users.users["ana"].role == "operator"
    with pytest.raises(AccountsError, match="at least 8 characters"):
        users.add("bo", "viewer", "short")
    with pytest.raises(AccountsError, match="user name 'a b'"):
        users.add("a b", "viewer", "long enough")
    with pytest.raises(AccountsError, match="trackside users list"):
        users.remove("nobody")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("users:\n- {name: ana, role: boss, password_hash: $7$1$a$b}\n", "users.0.role"),
        ("users:\n- {name: ana, role: viewer}\n", "users.0.password_hash"),
        ("users:\n- {name: ana, role: viewer, password_hash: plain}\n", "users.0.password_hash"),
        ("accounts: []\n", "accounts"),
        (
            "users:\n- {name: ana, role: viewer, password_hash: $7$1$a$b}\n"
            "- {name: ana, role: operator, password_hash: $7$1$a$b}\n",
            "users.1.name",
        ),
    ],
)
def test_a_broken_users_file_is_named_with_its_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(text)
    with pytest.raises(AccountsError, match=rf"^{path}: {key}: "):
        UsersFile(path)


def test_sessions_expire_when_idle_and_are_bounded() -> None:
    now = [1000.0]
    sessions = Sessions(idle_s=60, limit=2, clock=lambda: now[0])
    ana = Principal("ana", "operator", "session")
    first = sessions.create(ana)
    assert len(first) >= 43  # 256 random bits, URL-safe
    now[0] += 59
    assert sessions.get(first) == ana  # used: idle time starts again
    now[0] += 59
    assert sessions.get(first) == ana
    now[0] += 61
    assert sessions.get(first) is None

    a, b = sessions.create(ana), sessions.create(ana)
    sessions.get(a)  # b is now the least recently used
    c = sessions.create(ana)
    assert (sessions.get(a), sessions.get(b), sessions.get(c)) == (ana, None, ana)
    sessions.drop(a)
    assert sessions.get(a) is None and len(sessions) == 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"token": "t", "users_file": "users.yaml"}, "drop the token"),
        ({}, "set users_file"),
        ({"trusted_user_header": "X-Forwarded-User"}, "trusted_proxies"),
        ({"token": "t", "token_operator": "a b"}, "token_operator"),
    ],
)
def test_settings_choose_exactly_one_way_to_sign_in(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DashboardConfig(bootstrap_servers="127.0.0.1:9092", **settings)


def test_users_command_adds_lists_without_hashes_and_removes(tmp_path: Path) -> None:
    runner = CliRunner()
    app = build_app("users")
    path = str(tmp_path / "users.yaml")
    added = runner.invoke(
        app,
        ["users", "add", "ana", "--role", "operator", "-u", path, "--password-stdin"],
        input="correct horse\n",
    )
    assert added.exit_code == 0, added.output
    prompted = runner.invoke(app, ["users", "add", "vic", "-u", path], input="pw-123456\n" * 2)
    assert prompted.exit_code == 0, prompted.output  # asked twice, hidden
    listed = runner.invoke(app, ["users", "list", "-u", path])
    assert "ana" in listed.output and "operator" in listed.output and "vic" in listed.output
    assert "$7$" not in listed.output
    assert runner.invoke(app, ["users", "remove", "vic", "-u", path]).exit_code == 0
    assert list(UsersFile(Path(path)).users) == ["ana"]
