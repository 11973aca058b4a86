"""The `trackside` command. Each command group lives in its own module of this package.

`main()` imports only the module of the command it runs, so a long-running `trackside bridge
run` does not carry the dashboard, the device tools or the broker in its memory (about 30 MiB
less); `--help` and `app` load every module.
"""

from __future__ import annotations

import importlib
import sys

import typer
from typer.core import TyperArgument, TyperOption

from bridge import BridgeError
from gateway import GatewayError
from gateway.cli.console import console_err

__all__ = ["build_app", "main"]

# Command name -> module of this package that provides it, in the order `--help` lists them.
# A group module has `app` (added under the name); a command module has `register(app)`.
COMMANDS = {
    "demo": "demo",
    "dashboard": "dashboard",
    "simulate": "simulate",
    "boards": "devicetools",
    "flash": "devicetools",
    "deploy": "devicetools",
    "console": "devicetools",
    "virtual-board": "devicetools",
    "kafka": "kafka",
    "broker": "broker",
    "bridge": "bridge",
    "gateway": "gateway",
    "doctor": "doctor",
    "devices": "devices",
    "users": "users",
    "alerts": "alerts",
    "alertmanager": "alertmanager",
    "hardware": "hardware",
    "ota": "ota",
}


# typer's value types as the help names them, in the words click used before typer 0.29.
_TYPE_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "path": "PATH"}


def _value_in_words(self: TyperOption | TyperArgument, ctx: typer.Context) -> str | None:
    """What an option takes, as the help shows it: nothing for a flag (typer 0.29's rich help
    shows `<bool>` even for flags, which take no value), the option's metavar where it has one
    (`TRAIN:SCENARIO@SECONDS`), else the type in words (`INTEGER`, not `<int>`; a repeatable
    option's element type, not `<list[str]>`)."""
    if isinstance(self, TyperOption) and (self.is_flag or self.count):
        return None
    if self.metavar is not None:
        return self.metavar
    label = self.display_type(ctx).strip("<>").removeprefix("list[").removesuffix("]")
    return _TYPE_WORDS.get(label, label.upper())


# One place for every command's help, instead of a metavar on each flag.
TyperOption.display_type_rich = _value_in_words  # type: ignore[method-assign,assignment]
TyperArgument.display_type_rich = _value_in_words  # type: ignore[method-assign,assignment]


def build_app(only: str | None = None) -> typer.Typer:
    """The CLI with every command, or with just the module that provides `only`."""
    app = typer.Typer(
        name="trackside",
        help="Trackside: train sensor telemetry from MicroPython devices over MQTT into "
        "Apache Kafka.",
        no_args_is_help=True,
        rich_markup_mode="rich",
        pretty_exceptions_enable=False,
    )
    # A callback keeps the app a group even when it holds a single command (`demo`).
    app.callback()(lambda: None)
    modules = [COMMANDS[only]] if only in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for name in modules:
        module = importlib.import_module(f"gateway.cli.{name}")
        if hasattr(module, "register"):
            module.register(app)
        else:
            app.add_typer(module.app, name=name)
    return app


def __getattr__(name: str) -> typer.Typer:
    """`gateway.cli.app`: the whole CLI, built when first asked for (tests use it)."""
    if name == "app":
        return build_app()
    raise AttributeError(name)


def main() -> None:
    """Run the CLI; a GatewayError or BridgeError becomes one red line and exit status 1."""
    wanted = sys.argv[1] if len(sys.argv) > 1 else None
    try:
        build_app(wanted)()
    except (GatewayError, BridgeError) as exc:
        console_err.print(f"[bold red]error:[/] {exc}")
        raise SystemExit(1) from exc
