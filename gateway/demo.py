"""`trackside demo`: the whole system on this machine, started with one command."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

from amqtt.broker import Broker
from rich.console import Console

from gateway.broker import BrokerSettings, broker_config
from gateway.localkafka import LocalKafka, cache_dir, free_port, resolve_jars, stop_pid

__all__ = ["run_demo"]


async def _wait_for_stop() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _demo(console: Console, home: Path, mqtt_port: int) -> None:
    with console.status("Resolving Apache Kafka (first run only)..."):
        await asyncio.to_thread(resolve_jars)
    kafka = LocalKafka.on_free_ports(home / "kafka")
    with console.status(f"Starting Kafka on {kafka.bootstrap_servers}..."):
        proc = await asyncio.to_thread(kafka.start)
    try:
        broker = Broker(broker_config(BrokerSettings(port=mqtt_port)))
        with console.status(f"Starting the embedded MQTT broker on 127.0.0.1:{mqtt_port}..."):
            await broker.start()
        try:
            console.print(f"[green]Kafka[/]        {kafka.bootstrap_servers}")
            console.print(f"[green]MQTT broker[/]  127.0.0.1:{mqtt_port}")
            console.print(
                "[yellow]Not in the demo yet:[/] the bridge, the alert service, the dashboard "
                "and the simulated fleet (open issues). Ctrl-C stops everything."
            )
            await _wait_for_stop()
        finally:
            await broker.shutdown()
    finally:
        with console.status("Stopping Kafka..."):
            await asyncio.to_thread(stop_pid, proc.pid)
            with contextlib.suppress(ChildProcessError):
                proc.wait(5)


def run_demo(console: Console, mqtt_port: int | None = None) -> None:
    """Start the demo's services, print where they are, and stop them all on Ctrl-C."""
    asyncio.run(_demo(console, cache_dir() / "demo", mqtt_port or free_port()))
    console.print("Demo stopped.")
