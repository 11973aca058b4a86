"""`trackside alertmanager up|down|status|config`: Debian's Alertmanager for notifications."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from gateway.alertmanager import (
    DEFAULT_NOTIFICATIONS,
    DEFAULT_PORT,
    AlertmanagerError,
    LocalAlertmanager,
    alertmanager_config,
    load_notifications,
)
from gateway.cli import background
from gateway.cli.console import console
from gateway.localkafka import cache_dir

__all__ = ["app"]

app = typer.Typer(
    help=(
        "Run Prometheus Alertmanager (Debian's prometheus-alertmanager) with a config written "
        "from a Trackside notification file; the alert service posts to it."
    ),
    no_args_is_help=True,
)

_CONFIG = typer.Option(
    DEFAULT_NOTIFICATIONS, "--config", "-c", help="Notification file (YAML); default: built in."
)


def _running() -> tuple[LocalAlertmanager, int] | None:
    info = background.running("alertmanager")
    if info is None:
        return None
    return LocalAlertmanager(Path(info["home"]), info["port"]), int(info["pid"])


@app.command()
def config(notifications: Path = _CONFIG) -> None:
    """Validate a notification file and print the alertmanager.yml written from it."""
    text = yaml.safe_dump(alertmanager_config(load_notifications(notifications)), sort_keys=False)
    console.print(text, markup=False, highlight=False)


@app.command()
def up(
    notifications: Path = _CONFIG,
    port: int = typer.Option(DEFAULT_PORT, help="Web/API port on 127.0.0.1."),
    timeout: float = typer.Option(30.0, help="Seconds to wait until Alertmanager is ready."),
) -> None:
    """Write alertmanager.yml, start Alertmanager in the background, wait until it is ready."""
    running = _running()
    if running is not None:
        console.print(f"Alertmanager is already running on {running[0].url}")
        return
    notifications = notifications.resolve()
    manager = LocalAlertmanager(
        cache_dir() / "run" / "alertmanager", port, load_notifications(notifications)
    )
    with console.status(f"Starting Alertmanager on {manager.url}..."):
        proc = manager.start(timeout=timeout, detach=True)
    background.remember(
        "alertmanager", proc.pid, port=port, home=str(manager.home), config=str(notifications)
    )
    console.print(
        f"[green]Alertmanager is up[/] on {manager.url} (pid {proc.pid}, log {manager.log_file}); "
        f"give the alert service `alertmanager: {{url: {manager.url}}}`"
    )


@app.command()
def down() -> None:
    """Stop the Alertmanager started by `up` (SIGTERM, then SIGKILL after 30 s)."""
    running = _running()
    if running is None:
        console.print("Alertmanager is not running")
        return
    manager, pid = running
    with console.status("Stopping Alertmanager..."):
        background.forget("alertmanager", pid)
    console.print(f"Alertmanager on {manager.url} stopped")


@app.command()
def status() -> None:
    """Say whether the Alertmanager started by `up` runs and is ready; exit 1 if not."""
    running = _running()
    if running is None:
        console.print("Alertmanager is not running (start it with `trackside alertmanager up`)")
        raise typer.Exit(1)
    manager, pid = running
    try:
        manager.wait_ready(timeout=5)
    except AlertmanagerError as exc:
        console.print(f"Alertmanager (pid {pid}) runs but is not ready: {exc}")
        raise typer.Exit(1) from exc
    console.print(f"Alertmanager is ready on {manager.url} (pid {pid})")
