"""`trackside doctor`: check one gateway end to end, green/yellow/red, exit status 1 on red."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from gateway.cli.console import console
from gateway.doctor import Report, run_doctor

__all__ = ["register"]

_MARKS = {"ok": "[green]ok  [/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}


def _print(report: Report) -> None:
    for line in report.results:
        # One line per check, never wrapped: operators grep and paste them.
        mark = _MARKS[line.status]
        console.print(f"{mark} {escape(line.name)}: {escape(line.detail)}", soft_wrap=True)
        if line.fix is not None:
            console.print(f"     [dim]->[/] {escape(line.fix)}", soft_wrap=True)
    summary = (
        f"{report.count('ok')} ok, {report.count('warn')} warning(s), {report.count('fail')} failed"
    )
    console.print(f"[{'green' if report.ok else 'bold red'}]{summary}[/]")


def doctor(
    config: Path = typer.Option(
        Path("/etc/trackside/gateway.yaml"), "--config", "-c", help="Gateway YAML file."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON document, for monitoring."),
    timeout: float = typer.Option(
        5.0, min=0.1, help="Seconds to wait for each answer (Kafka, MQTT, HTTP control)."
    ),
) -> None:
    """Check a gateway: config, Kafka and its topics, broker and TLS, registry, spools,
    clock, connectors, versions. Exit status 1 when any line is red (docs/operations.md)."""
    report = run_doctor(config, timeout)
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        _print(report)
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `doctor` to the CLI."""
    app.command()(doctor)
