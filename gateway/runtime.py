"""`trackside gateway run`: the embedded broker, the connectors and the HTTP control plane.

Start order: broker, then connectors (they connect to it), then HTTP. SIGTERM or SIGINT stops
them in the reverse order; each connector drains first, so every reading the broker handed
over is either in Kafka or in the spool before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web
from amqtt.broker import Broker
from pydantic import SecretStr

from bridge.config import ConnectorConfig
from bridge.connector import Connector
from gateway.broker import broker_config
from gateway.config import GatewayConfig
from gateway.http_api import make_app
from gateway.registry import Registry

__all__ = ["GATEWAY_ACCOUNT", "run_gateway"]

log = logging.getLogger(__name__)

GATEWAY_ACCOUNT = "trackside-gateway"


def _for_embedded_broker(config: GatewayConfig) -> tuple[ConnectorConfig, ...]:
    """Connectors of the embedded broker speak MQTT 3.1.1 (amqtt's version) unless told
    otherwise, and those without a username get fresh credentials of the gateway's account."""
    if not config.broker.enabled:
        return config.connectors
    password = None
    if config.broker.registry and any(c.mqtt.username is None for c in config.connectors):
        password = Registry(config.broker.registry).add_service(GATEWAY_ACCOUNT, replace=True)
    connectors = []
    for connector in config.connectors:
        mqtt: dict[str, object] = {}
        if "protocol" not in connector.mqtt.model_fields_set:
            mqtt["protocol"] = "3.1.1"
        if password is not None and connector.mqtt.username is None:
            mqtt.update(username=GATEWAY_ACCOUNT, password=SecretStr(password))
        connectors.append(
            connector.model_copy(update={"mqtt": connector.mqtt.model_copy(update=mqtt)})
        )
    return tuple(connectors)


async def run_gateway(
    config: GatewayConfig, on_ready: Callable[[str], None] = lambda _: None
) -> None:
    """Run everything in `config` until SIGTERM/SIGINT; `on_ready` gets one line per service."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    broker = None
    if config.broker.enabled:
        broker = Broker(broker_config(config.broker))
        await broker.start()
        on_ready(f"MQTT broker (embedded) on {config.broker.host}:{config.broker.port}")
    connectors = {c.name: Connector(c) for c in _for_embedded_broker(config)}
    runner: web.AppRunner | None = None
    try:
        for connector in connectors.values():
            await asyncio.to_thread(connector.start)
            on_ready(f"connector {connector.name!r} running")
        if config.http.port:
            runner = web.AppRunner(make_app(connectors, config.http), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, config.http.host, config.http.port).start()
            on_ready(f"HTTP control on http://{config.http.host}:{config.http.port}/status")
        await stop.wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        for connector in connectors.values():
            await asyncio.to_thread(connector.stop)
            log.info("connector %s stopped", connector.name)
        if broker is not None:
            await broker.shutdown()
