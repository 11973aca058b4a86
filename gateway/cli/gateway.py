"""`trackside gateway init|check|run`: the runtime on the Raspberry Pi, from one YAML file."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import typer

from bridge.pipeline import Pipeline
from gateway import GatewayError
from gateway.certs import make_certificates
from gateway.cli.console import console, log_for_service
from gateway.config import load_gateway_config
from gateway.mosquitto import mosquitto_may_read
from gateway.runtime import run_gateway
from gateway.systemd import unit_text
from gateway.templates import gateway_yaml

__all__ = ["app"]

app = typer.Typer(
    help="The gateway runtime: MQTT broker, bridge connectors, alerts, dashboard, HTTP control.",
    no_args_is_help=True,
)

CONFIG = typer.Option(
    ..., "--config", "-c", metavar="FILE", help="Gateway YAML file (see docs/gateway.md)."
)


@app.command()
def init(
    out: Path = typer.Option(Path("gateway.yaml"), "--out", "-o", help="File to write."),
    bootstrap_servers: str = typer.Option(
        "127.0.0.1:9092", envvar="KAFKA_BOOTSTRAP_SERVERS", help="Kafka bootstrap servers."
    ),
    state_dir: Path | None = typer.Option(
        None,
        help="Folder for the registry, spools and TLS files, e.g. /var/lib/trackside "
        "(left out: paths relative to the file).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
) -> None:
    """Write a starting gateway file, every key commented, with new dashboard and HTTP tokens."""
    if out.exists() and not force:
        raise GatewayError(f"{out} exists: keep it, or use --force to replace it")
    if state_dir is not None:
        state_dir = state_dir.absolute()
    partial = out.with_name(f".{out.name}.part")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)
        # Mode 600 from the start: the file holds the tokens.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as written:
            written.write(gateway_yaml(bootstrap_servers, state_dir))
        partial.replace(out)
    except OSError as exc:
        raise GatewayError(
            f"cannot write {out}: {exc.strerror}; choose another --out or run as a user who "
            "may write there"
        ) from exc
    console.print(f"[green]{out} written[/]; next: `trackside gateway check -c {out}`")
    console.print(
        "It holds tokens and is readable by you only; for the service: "
        f"`sudo chgrp trackside {out}` and `sudo chmod 640 {out}`",
        soft_wrap=True,
    )


@app.command()
def check(config: Path = CONFIG) -> None:
    """Validate a gateway file and every connector in it."""
    loaded = load_gateway_config(config)
    for connector in loaded.connectors:
        Pipeline(connector)
    console.print(f"[green]{config}: valid ({len(loaded.connectors)} connector(s))[/]")


@app.command()
def run(config: Path = CONFIG) -> None:
    """Run what the file configures until SIGTERM or Ctrl-C, then drain and exit: the MQTT
    broker, the bridge connectors, the alert service (`alerts:`), the dashboard (`dashboard:`)
    and HTTP control (health, status, pause/resume, Prometheus metrics)."""
    log_for_service()
    loaded = load_gateway_config(config)
    asyncio.run(run_gateway(loaded, lambda line: console.print(f"[green]ready[/] {line}")))
    console.print("gateway stopped")


@app.command()
def certs(
    out: Path = typer.Option(Path("tls"), help="Folder for ca.pem, server.pem, server.key."),
    host: list[str] = typer.Option(
        ["localhost", "127.0.0.1"], help="Name or address devices use to reach the gateway."
    ),
) -> None:
    """Make a private CA and a server certificate for the broker's TLS listener."""
    ca_file, cert_file, key_file = make_certificates(out, host)
    console.print(f"CA for the devices: {ca_file}\nbroker: {cert_file} + {key_file}")
    if not mosquitto_may_read(key_file):
        console.print(
            "[yellow]Debian's Mosquitto (user mosquitto) cannot read the key; if it serves "
            f"the TLS listener: `sudo chgrp mosquitto {key_file}` and "
            f"`sudo chmod 640 {key_file}`[/]"
        )


@app.command()
def unit(
    config: Path = typer.Option(
        Path("/etc/trackside/gateway.yaml"), "--config", "-c", help="Gateway file for the unit."
    ),
    user: str = typer.Option("trackside", help="System user the gateway runs as."),
    state_dir: Path = typer.Option(
        Path("/var/lib/trackside"), help="Working folder: spool, device registry."
    ),
) -> None:
    """Print a systemd unit for this installation (see docs/raspberry-pi.md)."""
    print(unit_text(config, user, state_dir), end="")
