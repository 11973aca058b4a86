"""`trackside devices add|add-service|list|revoke|mosquitto`: the device registry;
`trackside devices configure`: a device's desired config (gateway/devices_config.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.table import Table

from gateway import GatewayError
from gateway.cli.console import console
from gateway.devices_config import (
    DesiredConfig,
    DeviceConfig,
    read_desired,
    twin_key,
    write_desired,
)
from gateway.mosquitto import mosquitto_may_read
from gateway.registry import Registry
from gateway.topics import Topics

__all__ = ["app"]

app = typer.Typer(
    help="Device registry: per-device MQTT credentials and topic ACLs; desired configs.",
    no_args_is_help=True,
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


@app.command()
def configure(
    train: str = typer.Option(..., "--train", "-t", help="The device's train."),
    device: int = typer.Option(..., "--device", "-d", help="The device's id."),
    sample_ms: int | None = typer.Option(None, help="Reading period, 100 to 3600000 ms."),
    disable: list[str] = typer.Option([], metavar="CHANNEL", help="Stop reading a channel."),
    enable: list[str] = typer.Option([], metavar="CHANNEL", help="Read a channel again."),
    bootstrap_servers: str = typer.Option(
        "127.0.0.1:9092", envvar="KAFKA_BOOTSTRAP_SERVERS", help="Kafka bootstrap servers."
    ),
    topic: str = typer.Option(Topics().device_config, help="The desired-config topic."),
) -> None:
    """Set a device's desired config, as the next version: what is not given stays as the
    previous version had it. The gateway sends it to the device (retained) and shows drift
    until the device reports running it."""
    key = twin_key(train, device)
    changes = {**{c: False for c in disable}, **{c: True for c in enable}}
    given = {"enable": changes} | ({} if sample_ms is None else {"sample_ms": sample_ms})
    _checked(given)  # before Kafka is asked anything
    previous = read_desired(bootstrap_servers, topic, key)
    base = previous.config.model_dump() if previous else {}
    config = _checked({**base, **given, "enable": {**base.get("enable", {}), **changes}})
    desired = DesiredConfig(version=previous.version + 1 if previous else 1, config=config)
    write_desired(bootstrap_servers, topic, key, desired)
    off = sorted(c for c, on in desired.config.enable.items() if not on)
    console.print(
        f"{key}: config version {desired.version} (sample_ms {desired.config.sample_ms}, "
        f"disabled: {', '.join(off) or 'none'}); the gateway sends it to the device"
    )


def _checked(config: Mapping[str, object]) -> DeviceConfig:
    """`config` as a DeviceConfig; GatewayError naming each problem."""
    try:
        return DeviceConfig.model_validate(config)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise GatewayError(f"config refused: {problems}") from exc
