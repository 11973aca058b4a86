"""Device tools on the command line: `trackside boards|flash|deploy|console|virtual-board`."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import FrameType

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from gateway.cli.console import console
from gateway.devicetools import DeployError, FlashError
from gateway.devicetools.boards import list_boards
from gateway.devicetools.deploy import (
    Board,
    BoardFile,
    DeviceConfig,
    board_files,
    deploy,
)
from gateway.devicetools.flash import (
    ESP_BOARDS,
    UF2_BOARDS,
    find_uf2_drives,
    flash_esp,
    flash_uf2,
)
from gateway.devicetools.serial_console import run_console
from gateway.devicetools.virtual_board import VirtualBoard
from gateway.firmware_bundle import bundle

__all__ = ["register"]

MQTT_PASSWORD_ENV = "TRACKSIDE_MQTT_PASSWORD"
WIFI_PASSWORD_ENV = "TRACKSIDE_WIFI_PASSWORD"


def register(app: typer.Typer) -> None:
    """Add the device tools as top-level commands."""
    app.command("boards")(boards)
    app.command("flash")(flash)
    app.command("deploy")(deploy_app)
    app.command("console")(console_command)
    app.command("virtual-board")(virtual_board)


def boards(
    show_all: bool = typer.Option(False, "--all", help="Also list ports without a USB identity."),
) -> None:
    """List attached serial boards and the likely kind of each."""
    found = list_boards(include_all=show_all)
    if not found:
        console.print("No serial boards attached (plug one in, or try --all).")
        return
    table = Table("port", "USB id", "likely kind", "description")
    for board in found:
        table.add_row(board.port, board.usb_id, board.kind, board.description)
    console.print(table)


def flash(
    firmware: Path = typer.Option(
        ..., metavar="IMAGE", help="MicroPython image: .bin for ESP32, .uf2 for Pico W."
    ),
    board: str = typer.Option("esp32-devkitc", help="esp32-devkitc or pico-w."),
    port: str = typer.Option("", metavar="PORT", help="Serial port of an ESP32 board."),
    drive: Path | None = typer.Option(
        None, metavar="FOLDER", help="Pico W boot drive (found when omitted)."
    ),
    baud: int = typer.Option(460800, help="Baud rate for writing an ESP32's flash."),
    erase: bool = typer.Option(True, help="Erase an ESP32's whole flash first."),
) -> None:
    """Put MicroPython on a board."""
    if board in ESP_BOARDS:
        if not port:
            raise FlashError("pass the ESP32's serial port with --port (see `trackside boards`)")
        steps = "erasing the flash, then writing" if erase else "writing"
        with console.status(f"Flashing the board on {port}: {steps} {firmware.name}..."):
            chip = flash_esp(port, firmware, board, baud=baud, erase=erase)
        console.print(f"[green]MicroPython written to the {chip} on {port}[/]")
    elif board in UF2_BOARDS:
        drive = drive or _only_uf2_drive()
        with console.status(f"Copying {firmware.name} to {drive}..."):
            target = flash_uf2(firmware, drive, board)
        console.print(f"[green]{target} copied; the Pico W restarts into MicroPython[/]")
    else:
        raise FlashError(f"unknown board {board}: use {', '.join([*ESP_BOARDS, *UF2_BOARDS])}")


def _only_uf2_drive() -> Path:
    drives = find_uf2_drives()
    if len(drives) != 1:
        found = ", ".join(map(str, drives)) or "none"
        raise FlashError(
            f"cannot pick the Pico W's boot drive (found: {found}); hold BOOTSEL while plugging "
            "it in, or pass --drive"
        )
    return drives[0]


def deploy_app(
    port: str = typer.Option(
        ..., metavar="PORT", help="Serial port of the board (see `trackside boards`)."
    ),
    device_id: int = typer.Option(..., metavar="ID", help="The device's 32-bit id."),
    train: str = typer.Option(..., metavar="TRAIN", help="Train id, 1-32 characters, e.g. T101."),
    broker_host: str = typer.Option(
        ..., metavar="HOST", help="MQTT broker the device publishes to."
    ),
    broker_port: int | None = typer.Option(
        None,
        metavar="PORT",
        help="MQTT broker port.",
        show_default="8883 with --tls, else 1883",
    ),
    user: str = typer.Option(
        "", metavar="NAME", help="MQTT user of this device: device-<id> in the gateway's registry."
    ),
    password_file: Path | None = typer.Option(
        None, metavar="FILE", help=f"File holding the MQTT password (else ${MQTT_PASSWORD_ENV})."
    ),
    tls: bool = typer.Option(
        False, help="Connect over TLS, checking the broker against --ca-file."
    ),
    ca_file: Path | None = typer.Option(
        None,
        metavar="FILE",
        help="The gateway's CA (ca.pem of `trackside gateway certs`), copied to the board.",
    ),
    wifi_ssid: str = typer.Option("", help="Wi-Fi network of a hardware board."),
    wifi_password_file: Path | None = typer.Option(
        None, metavar="FILE", help=f"File holding the Wi-Fi password (else ${WIFI_PASSWORD_ENV})."
    ),
    board: str = typer.Option("esp32-devkitc", help="esp32-devkitc, pico-w or unix."),
    sample_ms: int = typer.Option(1000, metavar="MS", help="Milliseconds between readings."),
    compile_: bool = typer.Option(True, "--compile/--no-compile", help="Compile with mpy-cross."),
    ota_key: Path | None = typer.Option(
        None, metavar="FILE", help="The fleet's public release key (release.pub of `ota keygen`)."
    ),
) -> None:
    """Copy the app and a per-device trackside.json to a board, verify, and reset it."""
    try:
        config = DeviceConfig.model_validate(
            {
                "device_id": device_id,
                "train_id": train,
                "board": board,
                "broker": {
                    "host": broker_host,
                    "port": broker_port,
                    "user": user,
                    "password": _secret(password_file, MQTT_PASSWORD_ENV),
                    "tls": tls,
                    "ca_file": ca_file,
                },
                "wifi": {
                    "ssid": wifi_ssid,
                    "password": _secret(wifi_password_file, WIFI_PASSWORD_ENV),
                },
                "sample_ms": sample_ms,
                "ota_key": _secret(ota_key, "TRACKSIDE_OTA_KEY"),
            }
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise DeployError(f"invalid device settings: {problems}") from exc
    doing = "Compiling the app with mpy-cross" if compile_ else "Bundling the app"
    with console.status(f"{doing} for {config.board}..."):
        files = board_files(bundle(config.board), config, compile_=compile_)
    _deploy_with_progress(port, files, config.board)


def _deploy_with_progress(port: str, files: list[BoardFile], board: Board) -> None:
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        # The first write names its file; until then the board is being reached and its
        # files listed (a few seconds over a USB serial port).
        task = progress.add_task(f"connecting to {port}", total=sum(len(f.data) for f in files))
        done: dict[str, int] = {}

        def on_write(target: str, written: int, _size: int) -> None:
            done[target] = written
            progress.update(task, description=target, completed=sum(done.values()))

        result = deploy(port, files, board, on_write=on_write)
    console.print(
        f"[green]{result.files} files ({result.size} bytes) copied to {port}, verified by "
        f"sha256, board reset[/] in {result.seconds:.1f} s"
    )


def _secret(path: Path | None, env: str) -> str:
    if path is None:
        return os.environ.get(env, "")
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise DeployError(f"cannot read {path}: {exc.strerror}") from exc


def console_command(
    port: str = typer.Option(..., metavar="PORT", help="Serial port of the board."),
    baud: int = typer.Option(115200, help="Baud rate."),
) -> None:
    """A serial terminal to the board's REPL; Ctrl-] leaves."""
    console.print(f"Connected to {port}; Ctrl-] leaves, Ctrl-C interrupts main.py, Ctrl-D resets")
    run_console(port, sys.stdin.fileno(), sys.stdout.buffer, baudrate=baud)


def virtual_board(
    root: Path = typer.Option(
        Path("virtual-board"), metavar="FOLDER", help="Folder holding the board's files."
    ),
) -> None:
    """Run a virtual board (the MicroPython unix port on a pseudo-terminal) until Ctrl-C."""
    board = VirtualBoard(root)

    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        board.stop()

    signal.signal(signal.SIGTERM, on_sigterm)
    console.print(f"Virtual board: {board.port}", soft_wrap=True)
    console.print(f"filesystem: {board.root} (Ctrl-C stops the board)", soft_wrap=True)
    try:
        board.run()
    except KeyboardInterrupt:
        console.print("virtual board stopped")
