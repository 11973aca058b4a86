"""`trackside dashboard`: the maintenance dashboard on one port, fed from Kafka."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path

import typer
from pydantic import ValidationError

from gateway.alerts.config import DEFAULT_RULES
from gateway.cli.console import console
from gateway.dashboard import DashboardError
from gateway.dashboard.accounts import Role
from gateway.dashboard.config import DashboardConfig, DashboardTls
from gateway.dashboard.server import serve
from gateway.topics import Topics

__all__ = ["TOKEN_ENV", "register"]

TOKEN_ENV = "TRACKSIDE_DASHBOARD_TOKEN"
DEFAULTS = Topics()
TOKEN_FILE = typer.Option(
    None, help=f"File with the token for actions (else ${TOKEN_ENV}, else generated)."
)


def _token(token_file: Path | None, accounts: bool) -> str | None:
    """The single-operator token; None when accounts (a users file, a proxy) say who acts."""
    if accounts:
        if token_file is not None or os.environ.get(TOKEN_ENV, "").strip():
            raise DashboardError(
                f"--token-file and ${TOKEN_ENV} are the single-operator mode; with accounts "
                "(--users-file, --trusted-user-header) drop the token"
            )
        return None
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise DashboardError(f"cannot read --token-file {token_file}: {exc.strerror}") from exc
        if not token:
            raise DashboardError(f"--token-file {token_file} is empty: put the token in it")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    token = secrets.token_urlsafe(24)
    console.print(f"No token given: operator actions need this one: [bold]{token}[/]")
    return token


def _tls(cert_file: Path | None, key_file: Path | None) -> DashboardTls | None:
    if cert_file is None and key_file is None:
        return None
    if cert_file is None or key_file is None:
        raise DashboardError("give both --tls-cert-file and --tls-key-file, or neither")
    return DashboardTls(cert_file=cert_file, key_file=key_file)


def register(app: typer.Typer) -> None:
    """Add the top-level `dashboard` command to the CLI."""

    @app.command()
    def dashboard(
        bootstrap_servers: str = typer.Option(
            "127.0.0.1:9092", envvar="KAFKA_BOOTSTRAP_SERVERS", help="Kafka bootstrap servers."
        ),
        host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every one)."),
        port: int = typer.Option(8080, help="HTTP port (0: any free port)."),
        token_file: Path | None = TOKEN_FILE,
        telemetry_topic: str = typer.Option(DEFAULTS.telemetry),
        device_status_topic: str = typer.Option(DEFAULTS.device_status),
        alerts_topic: str = typer.Option(DEFAULTS.alerts),
        maintenance_topic: str = typer.Option(DEFAULTS.maintenance),
        operator_actions_topic: str = typer.Option(DEFAULTS.operator_actions),
        device_config_topic: str = typer.Option(DEFAULTS.device_config),
        ota_progress_topic: str = typer.Option(DEFAULTS.ota_progress),
        history: int = typer.Option(120, help="Values kept per channel and train."),
        users_file: Path | None = typer.Option(
            None, help="Accounts from `trackside users add` (instead of the token)."
        ),
        token_operator: str = typer.Option(
            "operator", help="Name recorded for actions taken with the token."
        ),
        trusted_user_header: str | None = typer.Option(
            None, help="Header naming the user, set by a single sign-on proxy (docs first)."
        ),
        trusted_role_header: str | None = typer.Option(None, help="Header with the role."),
        trusted_default_role: Role = typer.Option(
            "viewer", help="Role when the proxy sends no role header."
        ),
        trusted_proxy: list[str] = typer.Option(
            [], help="Address or network (CIDR) of the proxy; repeat for several."
        ),
        tls_cert_file: Path | None = typer.Option(None, help="Serve HTTPS: certificate (PEM)."),
        tls_key_file: Path | None = typer.Option(None, help="Serve HTTPS: its key (PEM)."),
        rules_file: Path = typer.Option(
            DEFAULT_RULES, help="The alert service's rule file: its levels are drawn on charts."
        ),
        alertmanager_url: str | None = typer.Option(
            None, help="Alertmanager (http://host:9094) for maintenance windows; none: hidden."
        ),
    ) -> None:
        """Serve the fleet, live values, alerts and maintenance flags; Ctrl-C stops it."""
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            config = DashboardConfig(
                bootstrap_servers=bootstrap_servers,
                token=_token(token_file, users_file is not None or trusted_user_header is not None),
                token_operator=token_operator,
                users_file=users_file,
                trusted_user_header=trusted_user_header,
                trusted_role_header=trusted_role_header,
                trusted_default_role=trusted_default_role,
                trusted_proxies=tuple(trusted_proxy),
                tls=_tls(tls_cert_file, tls_key_file),
                host=host,
                port=port,
                history=history,
                rules_file=rules_file,
                alertmanager_url=alertmanager_url,
                topics=Topics(
                    telemetry=telemetry_topic,
                    device_status=device_status_topic,
                    alerts=alerts_topic,
                    maintenance=maintenance_topic,
                    operator_actions=operator_actions_topic,
                    device_config=device_config_topic,
                    ota_progress=ota_progress_topic,
                ),
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise DashboardError(f"invalid dashboard option: {problems}") from exc

        def ready(url: str) -> None:
            console.print(f"[green]dashboard at[/] {url}", highlight=False)

        asyncio.run(serve(config, ready))
        console.print("dashboard stopped")
