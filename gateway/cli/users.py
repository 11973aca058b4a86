"""`trackside users add|remove|list`: the dashboard's operator accounts (docs/dashboard.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from gateway.cli.console import console
from gateway.dashboard.accounts import MIN_PASSWORD, AccountsError, Role, UsersFile

__all__ = ["app"]

app = typer.Typer(
    help="Dashboard accounts: who may sign in, as viewer or operator.", no_args_is_help=True
)

USERS_FILE = typer.Option(
    Path("dashboard-users.yaml"),
    "--users-file",
    "-u",
    envvar="TRACKSIDE_USERS_FILE",
    help="Users file (also $TRACKSIDE_USERS_FILE); the dashboard's dashboard.users_file.",
)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise AccountsError("--password-stdin: no password on standard input")
        return password
    return str(
        typer.prompt(
            f"Password (at least {MIN_PASSWORD} characters)",
            hide_input=True,
            confirmation_prompt=True,
        )
    )


@app.command()
def add(
    name: str = typer.Argument(..., help="Account name, recorded with every action it takes."),
    role: Role = typer.Option(
        "viewer", "--role", "-r", help="viewer (reads) or operator (also acknowledges, clears)."
    ),
    users_file: Path = USERS_FILE,
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from one line of standard input."
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Give an existing account a new password and role."
    ),
) -> None:
    """Add an account; the password is asked twice and stored only as a hash."""
    users = UsersFile(users_file)
    users.check_new(name, replace)
    users.add(name, role, _password(password_stdin), replace=replace)
    console.print(f"{name} ({role}) saved in {users_file}; a running dashboard picks it up")


@app.command()
def remove(name: str = typer.Argument(...), users_file: Path = USERS_FILE) -> None:
    """Remove an account; its sessions end at their next request."""
    UsersFile(users_file).remove(name)
    console.print(f"{name} removed from {users_file}")


@app.command("list")
def list_users(users_file: Path = USERS_FILE) -> None:
    """The accounts and their roles (never the hashes)."""
    users = UsersFile(users_file).users
    if not users:
        console.print(f"no accounts in {users_file}: `trackside users add NAME --role operator`")
        return
    table = Table("name", "role")
    for user in users.values():
        table.add_row(user.name, user.role)
    console.print(table)
