"""`trackside ota keygen|release|verify|push`: signed over-the-air updates of the device app."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from gateway.cli.console import console
from gateway.firmware_bundle import BOARDS
from gateway.ota import OtaError
from gateway.ota.push import DeviceUpdate, Push, Target
from gateway.ota.release import (
    MIN_MICROPYTHON,
    build_release,
    generate_key,
    load_private_key,
    load_public_key,
    read_release,
)

__all__ = ["app"]

app = typer.Typer(
    help="Over-the-air app updates: release keys, signed releases, pushing them to devices.",
    no_args_is_help=True,
)

PUBLIC_KEY = typer.Option(
    Path("release.pub"), "--public-key", metavar="FILE", help="The public release key (hex)."
)


@app.command()
def keygen(
    key: Path = typer.Option(
        Path("release.key"), metavar="FILE", help="Where to write the private key (mode 600)."
    ),
    public_key: Path = PUBLIC_KEY,
) -> None:
    """Make the fleet's release key; devices get the public half as trackside.json's ota_key."""
    public_hex = generate_key(key, public_key)
    console.print(f"private key [bold]{key}[/] (keep it offline); public key {public_key}:")
    console.print(public_hex)


@app.command()
def release(
    version: str = typer.Option(..., metavar="VERSION", help="The release's version, e.g. 1.1.0."),
    key: Path = typer.Option(Path("release.key"), metavar="FILE", help="The private release key."),
    board: str = typer.Option("esp32-devkitc", help=f"Board kind: {', '.join(BOARDS)}."),
    out: Path | None = typer.Option(
        None, metavar="FILE", help="Bundle to write.", show_default="app-VERSION-BOARD.tar"
    ),
    firmware: Path | None = typer.Option(
        None, metavar="DIR", help="Take the app's modules from DIR instead of this installation."
    ),
    min_micropython: str = typer.Option(MIN_MICROPYTHON, help="Oldest MicroPython it runs on."),
) -> None:
    """Build the app for one board kind (compiled as `deploy` compiles it) and sign it."""
    data = build_release(board, version, load_private_key(key), firmware, min_micropython)
    target = out or Path(f"app-{version}-{board}.tar")
    target.write_bytes(data)
    made = read_release(data)
    console.print(f"[green]{target}[/]: {version} for {board}, {len(made.files)} files, "
                  f"{made.size} bytes to fetch, bundle {len(data)} bytes")


@app.command()
def verify(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="A release bundle."),
    public_key: Path = PUBLIC_KEY,
) -> None:
    """Check a bundle as a device would: the signature, then every file's SHA-256."""
    made = read_release(bundle.read_bytes(), load_public_key(public_key.read_text()))
    manifest = made.manifest
    console.print(f"[green]valid[/]: {made.version} for {', '.join(manifest['boards'])}, "
                  f"MicroPython {manifest['micropython']} or later, {len(made.files)} files, "
                  f"{made.size} bytes, signed by {public_key}")


@app.command()
def push(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="A release bundle."),
    train: str = typer.Option(..., metavar="TRAIN", help="Train of the devices."),
    device: list[int] = typer.Option(..., metavar="ID", help="Device id; repeat for several."),
    host: str = typer.Option("127.0.0.1", help="The gateway's MQTT broker."),
    port: int = typer.Option(1883, help="Its port."),
    user: str = typer.Option("", metavar="NAME", help="A service account of the registry."),
    password_file: Path | None = typer.Option(
        None, metavar="FILE", help="File holding its password (else $TRACKSIDE_MQTT_PASSWORD)."
    ),
    public_key: Path = PUBLIC_KEY,
    timeout: float = typer.Option(600.0, metavar="SECONDS", help="Per device, to its verdict."),
) -> None:
    """Update devices over their MQTT topics; each ends confirmed or rolled back (and why)."""
    made = read_release(bundle.read_bytes(), load_public_key(public_key.read_text()))
    password = (password_file.read_text().strip() if password_file
                else os.environ.get("TRACKSIDE_MQTT_PASSWORD", ""))
    pusher = Push(made, [Target(train, d) for d in device], host, port, user or None,
                  password or None, timeout_s=timeout)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TextColumn("{task.fields[state]}"))
    with Progress(*columns, console=console, transient=True) as progress:
        tasks = {d: progress.add_task(f"{train}/{d}", total=made.size, state="") for d in device}

        def show(updates: list[DeviceUpdate]) -> None:
            for u in updates:
                progress.update(tasks[u.target.device_id], completed=min(u.fetched, made.size),
                                state=u.state)

        results = pusher.run(show)
    table = Table("device", "result", "seconds", "detail")
    for u in results:
        colour = "green" if u.ok else "red"
        table.add_row(f"{train}/{u.target.device_id}", f"[{colour}]{u.state}[/]",
                      f"{u.seconds:.1f}", u.detail)
    console.print(table)
    if not all(u.ok for u in results):
        raise OtaError(f"{sum(not u.ok for u in results)} of {len(results)} devices not updated")
