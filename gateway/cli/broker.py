"""`trackside broker run`: the embedded amqtt MQTT broker on its own."""

from __future__ import annotations

import asyncio

import typer

from gateway.broker import serve
from gateway.cli.console import console

__all__ = ["app"]

app = typer.Typer(help="The embedded MQTT broker (amqtt).", no_args_is_help=True)


@app.command()
def run(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(1883, help="TCP port to listen on."),
) -> None:
    """Run the embedded broker in the foreground until Ctrl-C or SIGTERM."""
    console.print(f"Embedded MQTT broker on {host}:{port} (Ctrl-C stops it)")
    asyncio.run(serve(host, port))
