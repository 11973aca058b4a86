"""`trackside devices add|add-service|list|revoke|mosquitto`: the device registry."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.table import Table

from gateway.cli.console import console
from gateway.mosquitto import mosquitto_may_read
from gateway.registry import Registry

__all__ = ["app"]

app = typer.Typer(
    help="Device registry: per-device MQTT credentials and topic ACLs.", no_args_is_help=True
)

REGISTRY = typer.Option(
    Path("devices.yaml"),
    "--registry",
    "-r",
    envvar="TRACKSIDE_REGISTRY",
    help="Registry file (also $TRACKSIDE_REGISTRY).",
)
PASSWORD_FILE = typer.Option(
    None, help="Write the new password to this file (mode 600) instead of printing it."
)


def _hand_out(password: str, password_file: Path | None, username: str) -> None:
    if password_file is None:
        console.print(f"username [bold]{username}[/]  password [bold]{password}[/]")
        console.print("[dim]Shown once: it is stored only as a hash.[/]")
        return
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    console.print(f"username [bold]{username}[/]; password written to {password_file}")


@app.command()
def add(
    device_id: int = typer.Argument(..., help="The device's 32-bit id (as in its readings)."),
    train: str = typer.Option(..., "--train", "-t", help="Train the device is mounted in."),
    registry: Path = REGISTRY,
    password_file: Path | None = PASSWORD_FILE,
) -> None:
    """Register a device: it may publish only under trackside/v1/TRAIN/DEVICE_ID/."""
    password = Registry(registry).add_device(device_id, train)
    _hand_out(password, password_file, f"device-{device_id}")


@app.command("add-service")
def add_service(
    username: str = typer.Argument(..., help="Account name, e.g. bridge-2 or simulator."),
    registry: Path = REGISTRY,
    password_file: Path | None = PASSWORD_FILE,
) -> None:
    """Register a service account with access to the whole trackside/ topic tree."""
    password = Registry(registry).add_service(username)
    _hand_out(password, password_file, username)


@app.command("list")
def list_accounts(registry: Path = REGISTRY) -> None:
    """Show every account (never a password)."""
    table = Table("username", "kind", "train", "device", "state")
    for account in Registry(registry).accounts.values():
        table.add_row(
            account.username,
            account.kind,
            account.train_id or "",
            "" if account.device_id is None else str(account.device_id),
            "[red]revoked[/]" if account.revoked else "active",
        )
    console.print(table)


@app.command()
def revoke(
    username: str = typer.Argument(..., help="e.g. device-42"), registry: Path = REGISTRY
) -> None:
    """Refuse an account from now on (the embedded broker notices at the next CONNECT)."""
    Registry(registry).revoke(username)
    console.print(f"{username} revoked; regenerate Mosquitto's files if you use Mosquitto")


@app.command()
def mosquitto(
    password_file: Path = typer.Option(..., help="Mosquitto password_file to write."),
    acl_file: Path = typer.Option(..., help="Mosquitto acl_file to write."),
    registry: Path = REGISTRY,
) -> None:
    """Write Mosquitto's password and ACL files from the registry (then reload Mosquitto).

    They are mode 640, group mosquitto, when run as root (or as a member of that group), so
    that Debian's Mosquitto, running as user mosquitto, can read them.
    """
    Registry(registry).write_mosquitto_files(password_file, acl_file)
    console.print(f"wrote {password_file} and {acl_file}; reload Mosquitto (SIGHUP) to apply")
    if not (mosquitto_may_read(password_file) and mosquitto_may_read(acl_file)):
        console.print(
            "[yellow]Debian's Mosquitto (user mosquitto) cannot read them: run this command "
            f"with sudo, or `sudo chgrp mosquitto {password_file} {acl_file}` and "
            f"`sudo chmod 640 {password_file} {acl_file}`[/]"
        )
