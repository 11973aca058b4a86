"""`trackside gateway run`: broker, connectors, alert service, dashboard and HTTP control.

Start order: broker, then connectors (they connect to it), the alert service, the dashboard,
then HTTP control. A stop (SIGTERM, SIGINT or the `stop` event) stops them in the reverse
order; each connector drains first, so every reading the broker handed over is either in Kafka
or in the spool before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from amqtt.broker import Broker
from pydantic import SecretStr

from bridge.config import ConnectorConfig
from bridge.connector import Connector, tune_gc_for_streaming
from gateway import GatewayError
from gateway.alerts.config import ServiceConfig
from gateway.alerts.rules import load_rules
from gateway.alerts.service import AlertService
from gateway.broker import broker_config
from gateway.config import GatewayConfig
from gateway.dashboard.server import create_app
from gateway.http_api import make_app
from gateway.registry import Registry
from gateway.supervise import Supervisor

__all__ = ["GATEWAY_ACCOUNT", "run_gateway"]

log = logging.getLogger(__name__)

GATEWAY_ACCOUNT = "trackside-gateway"


def _for_embedded_broker(config: GatewayConfig) -> tuple[ConnectorConfig, ...]:
    """Connectors of the embedded broker use its port and MQTT 3.1.1 (amqtt's version) unless
    told otherwise, and those without a username get fresh credentials of the gateway's own
    account."""
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
        if "port" not in connector.mqtt.model_fields_set:
            mqtt["port"] = config.broker.port
        if password is not None and connector.mqtt.username is None:
            mqtt.update(username=GATEWAY_ACCOUNT, password=SecretStr(password))
        connectors.append(
            connector.model_copy(update={"mqtt": connector.mqtt.model_copy(update=mqtt)})
        )
    return tuple(connectors)


async def run_gateway(
    config: GatewayConfig,
    on_ready: Callable[[str], None] = lambda _: None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run everything in `config` until `stop` is set (default: SIGTERM/SIGINT).

    `on_ready` gets one line per service as it comes up.
    """
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    connectors: dict[str, Connector] = {}
    failures: list[str] = []
    async with contextlib.AsyncExitStack() as services:
        if config.broker.enabled:
            broker = Broker(broker_config(config.broker))
            await broker.start()
            services.push_async_callback(broker.shutdown)
            on_ready(f"MQTT broker (embedded) on {config.broker.host}:{config.broker.port}")
        for connector_config in _for_embedded_broker(config):
            connector = Connector(connector_config)
            await asyncio.to_thread(connector.start)
            services.push_async_callback(asyncio.to_thread, connector.stop)
            connectors[connector.name] = connector
            on_ready(f"connector {connector.name!r} running")
        if config.alerts is not None:
            await services.enter_async_context(_alert_service(config.alerts, stop, failures))
            on_ready("alert service running")
        if config.dashboard is not None:
            dashboard = config.dashboard
            await services.enter_async_context(
                _site(create_app(dashboard), dashboard.host, dashboard.port)
            )
            on_ready(f"dashboard on http://{dashboard.host}:{dashboard.port}/")
        if config.http.port:
            app = make_app(connectors, config.http)
            await services.enter_async_context(_site(app, config.http.host, config.http.port))
            on_ready(f"HTTP control on http://{config.http.host}:{config.http.port}/status")
        tune_gc_for_streaming()
        await stop.wait()
    if failures:
        raise GatewayError("; ".join(failures))


@contextlib.asynccontextmanager
async def _site(app: web.Application, host: str, port: int) -> AsyncIterator[None]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _alert_service(
    config: ServiceConfig, _gateway_stop: asyncio.Event, _failures: list[str]
) -> AsyncIterator[Supervisor]:
    """The alert service in a supervised thread: it waits while Kafka is away, and a failure
    restarts it with backoff (one log line and `trackside_worker_restarts_total` each); the
    broker and the connectors keep running either way. Yields the supervisor (`state`,
    `failure`) for health checks."""
    service = AlertService(config, load_rules(config.rules_file))
    supervisor = Supervisor("alert service", service.run)
    supervisor.start()
    try:
        yield supervisor
    finally:
        await asyncio.to_thread(supervisor.stop, 30)
