"""`trackside simulate`: a simulated fleet publishing to an MQTT broker, with live progress."""

from __future__ import annotations

import asyncio
import logging
import signal
import tempfile
from pathlib import Path

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table

from gateway.cli.console import console
from gateway.simulate.fast import FastFleet
from gateway.simulate.firmware_mode import FirmwareFleet
from gateway.simulate.fleet import (
    BrokerAddress,
    FaultAssignment,
    FleetStats,
    SimulatedFleet,
    fleet_spec,
    load_credentials,
)
from gateway.simulate.scenarios import SCENARIOS

__all__ = ["register"]

FAULT_HELP = (
    "A fault scenario starting SECONDS after the start, repeatable; TRAIN * or left out: "
    "every train. "
    f"Scenarios: {', '.join(SCENARIOS)}."
)


def _shown(stats: FleetStats, firmware: bool, broker: str) -> RenderableType:
    """The progress table, under a spinner saying what happens until the first reading."""
    if stats.published:
        return _table(stats, firmware)
    starting = (
        f"starting {stats.devices:,} firmware processes"
        if firmware
        else f"connecting {stats.devices:,} devices"
    )
    return Group(
        Spinner("dots", f"{starting} to the MQTT broker at {broker}..."), _table(stats, firmware)
    )


def _table(stats: FleetStats, firmware: bool) -> Table:
    title = "trackside simulate" + (" --firmware" if firmware else "")
    table = Table(title=title, show_header=False)
    table.add_column("")
    table.add_column("", justify="right")
    rows: list[tuple[str, str]] = [
        ("elapsed", f"{stats.elapsed_s:,.1f} s"),
        ("devices", f"{stats.devices:,}"),
        ("connections" if not firmware else "processes", f"{stats.connections:,}"),
        ("readings published", f"{stats.published:,}"),
        ("acknowledged" if not firmware else "seen on the broker", f"{stats.acked:,}"),
        ("readings/s", f"{stats.rate_per_s:,.0f}"),
    ]
    if not firmware:
        rows += [
            ("backlog", f"{stats.backlog:,}"),
            ("malformed frames", f"{stats.malformed:,}"),
            ("disabled devices", f"{stats.disabled:,}"),
            ("commands", f"{stats.commands:,}"),
            ("reconnects", f"{stats.reconnects:,}"),
        ]
    for name, value in rows:
        table.add_row(name, value)
    return table


async def _run(fleet: SimulatedFleet, duration_s: float | None) -> FleetStats:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        if task is not None:
            loop.add_signal_handler(sig, task.cancel)
    try:
        return await fleet.run(duration_s)
    except asyncio.CancelledError:
        return fleet.stats  # stopped by Ctrl-C or SIGTERM; run() has stopped the fleet


def register(app: typer.Typer) -> None:
    """Add the top-level `simulate` command to the CLI."""

    @app.command()
    def simulate(
        broker_host: str = typer.Option("127.0.0.1", metavar="HOST", help="MQTT broker host."),
        broker_port: int = typer.Option(1883, metavar="PORT", help="MQTT broker port."),
        trains: int = typer.Option(20, help="Number of trains: T101, T102, ..."),
        devices_per_train: int = typer.Option(1, help="Sensor devices on each train (1-99)."),
        rate_hz: float = typer.Option(1.0, help="Readings per second of each device."),
        fault: list[str] = typer.Option([], metavar="TRAIN:SCENARIO@SECONDS", help=FAULT_HELP),
        duration: float | None = typer.Option(
            None, metavar="SECONDS", help="Seconds to run (default: until Ctrl-C)."
        ),
        firmware: bool = typer.Option(
            False, "--firmware", help="Run the real firmware on the unix port, one process each."
        ),
        seed: int = typer.Option(0, help="Seed of the sensor models: same seed, same fleet."),
        speedup: float = typer.Option(1.0, help="Simulated seconds per wall second (fast mode)."),
        first_train: int = typer.Option(101, help="Number of the first train."),
        connections: int = typer.Option(4, help="MQTT connections the devices share (fast mode)."),
        per_device_connections: bool = typer.Option(
            False, "--per-device-connections", help="One connection and last will per device."
        ),
        credentials: Path | None = typer.Option(
            None,
            metavar="FILE",
            help='JSON {"<device id>": "<password>"}: connect as device-<id> each.',
        ),
        user: str | None = typer.Option(None, help="Broker user for shared connections."),
        password: str | None = typer.Option(
            None, envvar="TRACKSIDE_SIMULATE_PASSWORD", help="Broker password for --user."
        ),
        workdir: Path | None = typer.Option(
            None,
            metavar="FOLDER",
            help="Board folders for --firmware (default: a new temporary folder).",
        ),
    ) -> None:
        """Simulated trains publishing sensor readings, with fault scenarios; Ctrl-C stops."""
        logging.getLogger("gmqtt").setLevel(logging.ERROR)  # it warns on every reconnect
        spec = fleet_spec(
            trains=trains,
            devices_per_train=devices_per_train,
            rate_hz=rate_hz,
            speedup=speedup,
            seed=seed,
            first_train=first_train,
            faults=tuple(FaultAssignment.parse(f) for f in fault),
        )
        broker = BrokerAddress.model_validate(
            {"host": broker_host, "port": broker_port, "user": user, "password": password}
        )
        secrets = load_credentials(credentials) if credentials else None
        where = f"{broker_host}:{broker_port}"
        shown = _shown(FleetStats(devices=spec.device_count), firmware, where)
        with Live(shown, console=console) as live:

            def progress(stats: FleetStats) -> None:
                live.update(_shown(stats, firmware, where))

            fleet: SimulatedFleet
            folder = None
            if firmware:
                folder = workdir or Path(tempfile.mkdtemp(prefix="trackside-simulate-"))
                fleet = FirmwareFleet(spec, broker, folder, credentials=secrets, progress=progress)
            else:
                fleet = FastFleet(
                    spec,
                    broker,
                    connections=connections,
                    per_device_connections=per_device_connections or credentials is not None,
                    credentials=secrets,
                    progress=progress,
                )
            stats = asyncio.run(_run(fleet, duration))
        console.print(
            f"{stats.published:,} readings published, {stats.acked:,} acknowledged in "
            f"{stats.elapsed_s:,.1f} s: {stats.mean_rate_per_s:,.0f} readings/s"
        )
        if folder is not None:
            console.print(f"board folders and consoles: {folder}")
