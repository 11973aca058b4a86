"""`trackside demo`: the whole system on this machine, started with one command.

Kafka (started here), the gateway with its embedded broker, both connectors, the alert service
(with the `disable` policy on) and the dashboard, and a simulated fleet of 20 trains of which
two develop faults. Ctrl-C, SIGTERM or closing the terminal (SIGHUP) stops everything in order,
Kafka last.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from pydantic import SecretStr
from rich.console import Console
from rich.markup import escape

from bridge.config import SpoolConfig
from gateway import GatewayError
from gateway.alerts.config import DEFAULT_RULES, KafkaSettings, ServiceConfig
from gateway.alerts.notify import FLAG_ALERT
from gateway.config import (
    AlertmanagerRun,
    EmbeddedBroker,
    GatewayConfig,
    HttpSettings,
    default_connectors,
)
from gateway.dashboard.config import DashboardConfig
from gateway.localkafka import LocalKafka, cache_dir, free_port, resolve_jars, stop_pid
from gateway.runtime import run_gateway
from gateway.simulate import BrokerAddress, FastFleet, FaultAssignment
from gateway.simulate.fleet import fleet_spec
from gateway.topics import Topics, ensure_topics

__all__ = [
    "DEMO_FAULTS",
    "STOP_SIGNALS",
    "NoticePrinter",
    "check_free",
    "demo_config",
    "notice_line",
    "run_demo",
]

# Two of the twenty trains develop faults: a bearing of T104 overheats suddenly half a minute
# in (alerts, flag and `disable` within seconds); T113 loses coolant, so its engine creeps past
# the limit after about six minutes. Real time: the rate rules judge rises per wall-clock minute.
DEMO_FAULTS = ("T104:bearing_overheat_sudden@30", "T113:coolant_loss@0")
# Kafka runs in its own session, so a closed terminal's SIGHUP reaches only the demo, which
# must then stop Kafka itself: SIGHUP is a stop request like the others.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def demo_config(
    home: Path,
    bootstrap_servers: str,
    mqtt_port: int,
    dashboard_port: int,
    token: str,
    webhook_url: str,
) -> GatewayConfig:
    """The gateway of the demo: everything on, the disable policy on, state under `home`;
    Alertmanager sends its notifications to `webhook_url` (the demo prints them)."""
    rules = yaml.safe_load(DEFAULT_RULES.read_text())
    rules["policy"]["disable_train"] = True
    rules_file = home / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules, sort_keys=False))
    notifications = {
        "receivers": [{"name": "demo-terminal", "webhook": [webhook_url]}],
        "default_receiver": "demo-terminal",
        "group_wait": "5s",  # the built-in 30 s is long when someone is watching
        "group_interval": "30s",
    }
    notifications_file = home / "notifications.yaml"
    notifications_file.write_text(yaml.safe_dump(notifications, sort_keys=False))
    alertmanager = AlertmanagerRun(
        port=free_port(), notifications=notifications_file, state_dir=home / "alertmanager"
    )
    connectors = tuple(
        c.model_copy(update={"spool": SpoolConfig(path=home / "spool" / c.name)})
        for c in default_connectors(bootstrap_servers)
    )
    return GatewayConfig(
        broker=EmbeddedBroker(port=mqtt_port),
        connectors=connectors,
        http=HttpSettings(port=free_port()),
        alerts=ServiceConfig(
            kafka=KafkaSettings(bootstrap_servers=bootstrap_servers), rules_file=rules_file
        ),
        dashboard=DashboardConfig(
            bootstrap_servers=bootstrap_servers,
            token=SecretStr(token),
            port=dashboard_port,
            rules_file=rules_file,
            alertmanager_url=alertmanager.url,
        ),
        alertmanager=alertmanager,
    )


def check_free(port: int, option: str) -> None:
    """Raise GatewayError naming `option` if something listens on 127.0.0.1:`port`.

    The probe binds as the servers do, with SO_REUSEADDR: connections of the last demo still
    in TIME_WAIT must not count as "in use", since they do not stop the servers binding.
    """
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise GatewayError(
                f"port {port} is in use ({exc.strerror}): is another demo or broker running? "
                f"Stop it or pass {option} with a free port"
            ) from exc


async def _demo(console: Console, home: Path, mqtt_port: int, dashboard_port: int) -> None:
    check_free(mqtt_port, "--mqtt-port")
    check_free(dashboard_port, "--dashboard-port")
    with console.status("Resolving Apache Kafka (first run only)..."):
        await asyncio.to_thread(resolve_jars)
    shutil.rmtree(home, ignore_errors=True)  # every demo starts from an empty cluster
    home.mkdir(parents=True)
    kafka = LocalKafka.on_free_ports(home / "kafka")
    # Handled before Kafka starts: a stop request during its start stops it once it is up.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    token = secrets.token_urlsafe(12)
    notices = NoticePrinter(console)
    proc: subprocess.Popen[bytes] | None = None
    try:
        webhook_url = await notices.start()
        config = demo_config(
            home, kafka.bootstrap_servers, mqtt_port, dashboard_port, token, webhook_url
        )
        with console.status(f"Starting Kafka on {kafka.bootstrap_servers}..."):
            # Its own session: a Ctrl-C in the terminal must not stop Kafka before the gateway
            # has drained into it; the demo stops Kafka last.
            proc = await asyncio.to_thread(kafka.start, 120.0, True)
        if stop.is_set():
            return
        # Before the dashboard subscribes: a topic it finds missing is a warning on screen.
        await asyncio.to_thread(ensure_topics, kafka.bootstrap_servers, Topics())
        with console.status("Starting the gateway..."):
            ready = asyncio.Event()

            def on_ready(line: str) -> None:
                console.print(f"[green]ready[/] {line}")
                if line.startswith("HTTP control"):
                    ready.set()

            gateway = asyncio.create_task(run_gateway(config, on_ready, stop))
            await asyncio.wait(
                [gateway, asyncio.create_task(ready.wait())],
                return_when=asyncio.FIRST_COMPLETED,
            )
        if gateway.done():
            await gateway  # raises what stopped it
            return
        spec = fleet_spec(trains=20, faults=tuple(FaultAssignment.parse(f) for f in DEMO_FAULTS))
        async with FastFleet(spec, BrokerAddress(port=mqtt_port)):
            console.print(
                f"\n[bold]Dashboard:[/] http://127.0.0.1:{dashboard_port}/  "
                f"(token for acknowledge and clear: [bold]{token}[/])\n"
                f"20 simulated trains; faults: {', '.join(DEMO_FAULTS)} (seconds after start). "
                "Ctrl-C stops everything."
            )
            await stop.wait()
        await gateway
    finally:
        stop.set()
        await notices.stop()
        # After a SIGHUP the terminal is gone and writing to it fails: Kafka stops regardless.
        if proc is not None:
            with contextlib.suppress(OSError):
                console.print("Stopping Kafka...")
            await asyncio.to_thread(stop_pid, proc.pid)
            with contextlib.suppress(ChildProcessError):
                proc.wait(5)


class NoticePrinter:
    """A webhook receiver for Alertmanager that prints one line per notification: a train
    flagged or cleared, or an alert that flags nothing (each as Alertmanager grouped it)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Listen on a free loopback port; the URL Alertmanager posts to."""
        app = web.Application()
        app.router.add_post("/notify", self._notify)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}/notify"

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _notify(self, request: web.Request) -> web.Response:
        with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
            self.console.print(notice_line(await request.json()))
        return web.Response(text="ok")


def notice_line(notification: dict[str, Any]) -> str:
    """One line for an Alertmanager webhook notification: the train's flag first."""
    status = str(notification.get("status", ""))
    alerts = [a for a in notification.get("alerts", []) if a.get("status") == status]
    alerts.sort(key=lambda a: a.get("labels", {}).get("alertname") != FLAG_ALERT)
    first = alerts[0]["annotations"].get("summary", "") if alerts else ""
    more = f" (and {len(alerts) - 1} more {status})" if len(alerts) > 1 else ""
    colour = "red" if status == "firing" else "green"
    clock = time.strftime("%H:%M:%S")
    return f"{clock} [{colour}]notification[/] {escape(first)}{more}"


def run_demo(console: Console, mqtt_port: int, dashboard_port: int) -> None:
    """Start the demo, print where the dashboard is, and stop it all on Ctrl-C."""
    asyncio.run(_demo(console, cache_dir() / "demo", mqtt_port, dashboard_port))
    with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
        console.print("Demo stopped.")
