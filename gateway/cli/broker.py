"""`trackside broker run`: the embedded amqtt MQTT broker on its own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from pydantic import ValidationError

from gateway.broker import BrokerSettings, BrokerTls, serve
from gateway.cli.console import console

__all__ = ["app"]

app = typer.Typer(help="The embedded MQTT broker (amqtt).", no_args_is_help=True)

REGISTRY = typer.Option(None, help="Device registry file: require passwords and enforce ACLs.")
CERT = typer.Option(None, help="TLS certificate chain (PEM).")
KEY = typer.Option(None, help="TLS private key (PEM).")


@app.command()
def run(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(1883, help="TCP port to listen on without TLS."),
    plain: bool = typer.Option(
        True, help="Listen without TLS on --port; --no-plain needs --tls-port."
    ),
    registry: Path | None = REGISTRY,
    tls_port: int = typer.Option(0, help="Also listen with TLS on this port (0: no TLS)."),
    cert: Path | None = CERT,
    key: Path | None = KEY,
) -> None:
    """Run the embedded broker in the foreground until Ctrl-C or SIGTERM."""
    tls = None
    if tls_port:
        if cert is None or key is None:
            raise typer.BadParameter("--tls-port needs --cert and --key", param_hint="--tls-port")
        tls = BrokerTls(port=tls_port, cert_file=cert, key_file=key)
    elif not plain:
        raise typer.BadParameter(
            "--no-plain turns off the only listener: add --tls-port with --cert and --key",
            param_hint="--no-plain",
        )
    try:
        settings = BrokerSettings(host=host, port=port, plain=plain, registry=registry, tls=tls)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise typer.BadParameter(problems) from exc
    where = [f"{host}:{port}"] if plain else []
    where += [f"{host}:{tls_port} (TLS)"] if tls_port else []
    console.print(f"Embedded MQTT broker on {' and '.join(where)} (Ctrl-C stops it)")
    asyncio.run(serve(settings))
