"""`trackside hardware check [BOARD]` and `trackside hardware show BOARD`."""

from __future__ import annotations

import typer
from rich.table import Table

from gateway.cli.console import console
from gateway.hardware import HardwareError, boards, check, load_board, load_wiring, pin_uses

__all__ = ["app"]

app = typer.Typer(help="Board definitions, pin maps and wiring (hardware/).", no_args_is_help=True)


@app.command("check")
def check_command(
    board: str = typer.Argument(None, help="Board to check; every board when left out."),
) -> None:
    """Validate the wiring of one board (or all): pin conflicts, flash, strapping, input-only."""
    errors = 0
    for name in [board] if board else boards():
        findings = check(load_board(name), load_wiring(name))
        for f in findings:
            colour = "red" if f.level == "error" else "yellow"
            console.print(f"[{colour}]{name}: {f.level}:[/] {f.message}")
        errors += sum(f.level == "error" for f in findings)
        if not findings:
            console.print(f"[green]{name}: wiring OK[/]")
    if errors:
        raise HardwareError(f"{errors} wiring error(s): fix hardware/wiring/ before deploying")


@app.command("show")
def show_command(board: str = typer.Argument(..., help="Board name, e.g. esp32-devkitc.")) -> None:
    """Print the pin map of a board: which sensor is on which pin."""
    spec, wiring = load_board(board), load_wiring(board)
    table = Table(title=spec.name)
    for column in ("role", "pin", "direction", "note"):
        table.add_column(column)
    for role, pin, direction in pin_uses(wiring):
        note = ""
        if isinstance(pin, int) and pin in spec.strapping:
            note = "strapping pin"
        elif isinstance(pin, str):
            note = spec.named.get(pin, "")
        table.add_row(role, str(pin), direction, note)
    console.print(table)
    console.print(f"1-Wire probes in ROM order: {', '.join(wiring.pins.onewire.probes)}")
