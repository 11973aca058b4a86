"""`trackside gateway run`: broker, connectors, alert service, dashboard and HTTP control.

Start order: connectors, then the embedded broker's listeners (so no device is acknowledged
before its connector runs), the alert service, the dashboard, then HTTP control. Connectors
on the embedded broker take readings in-process (gateway.intake): a device's PUBACK means its
reading is in Kafka or the spool. A stop (SIGTERM, SIGINT or the `stop` event) stops them in
the reverse order: each connector first stops taking readings (the broker stops acknowledging
them), then makes safe and acknowledges what it took, then the broker closes its connections;
what could not be made safe in time stays unacknowledged, and the devices send it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from bridge.config import ConnectorConfig
from bridge.connector import Connector, tune_gc_for_streaming
from gateway import GatewayError
from gateway.alertmanager import LocalAlertmanager, load_notifications
from gateway.alerts.config import AlertmanagerSettings, ServiceConfig
from gateway.alerts.rules import load_rules
from gateway.alerts.service import AlertService
from gateway.broker import BrokerSettings, DurableBroker, publish_check
from gateway.config import AlertmanagerRun, GatewayConfig
from gateway.dashboard.config import DashboardConfig
from gateway.dashboard.server import create_app, tls_context
from gateway.devices_config import ConfigPublisher, EmbeddedRetainer, MqttRetainer, Retainer
from gateway.http_api import make_app
from gateway.intake import BrokerIntake
from gateway.localkafka import stop_pid
from gateway.ota.config import OtaSettings
from gateway.ota.executor import RolloutExecutor
from gateway.supervise import Supervisor

__all__ = ["run_gateway"]

log = logging.getLogger(__name__)

BROKER_SHUTDOWN_S = 10


def _on_embedded_broker(config: GatewayConfig, connector: ConnectorConfig) -> bool:
    """Whether a connector takes its readings from the embedded broker, in-process: those
    that name no other broker (host and port left out, or the embedded broker's own)."""
    if not config.broker.enabled:
        return False
    mqtt, chosen = connector.mqtt, connector.mqtt.model_fields_set
    same_host = "host" not in chosen or mqtt.host == config.broker.host
    same_port = "port" not in chosen or mqtt.port == config.broker.port
    return same_host and same_port


async def run_gateway(
    config: GatewayConfig,
    on_ready: Callable[[str], None] = lambda _: None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run everything in `config` until `stop` is set (default: SIGTERM/SIGINT).

    `on_ready` gets one line per service as it comes up. A connector that fails ends the
    gateway with GatewayError (the process exits non-zero and systemd starts it again).
    """
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    connectors: dict[str, Connector] = {}
    failures: list[str] = []
    async with contextlib.AsyncExitStack() as services:
        intakes: list[BrokerIntake] = []
        plans: list[tuple[ConnectorConfig, BrokerIntake | None]] = []
        for connector_config in config.connectors:
            intake = None
            if _on_embedded_broker(config, connector_config):
                intake = BrokerIntake(connector_config.name, connector_config.mqtt.topics)
                intakes.append(intake)
            plans.append((connector_config, intake))
        broker = None
        if config.broker.enabled:
            broker = DurableBroker(config.broker, intakes, publish_check(config.broker))
            # Shut down after the connectors drained (callbacks run in reverse order).
            services.push_async_callback(_shutdown_broker, broker)
        for connector_config, intake in plans:
            connector = Connector(connector_config, intake.source if intake else None)
            services.push_async_callback(_stop_connector, connector)
            await asyncio.to_thread(connector.start)
            connectors[connector.name] = connector
            on_ready(f"connector {connector.name!r} running")
        if broker is not None:
            # Listening only now: no device is acknowledged before its connector runs.
            await broker.start()
            on_ready(f"MQTT broker (embedded) on {config.broker.host}:{config.broker.port}")
        workers = await _start_alerting(config, services, on_ready)
        if config.ota is not None:
            executor = _ota_executor(config.ota, config.broker, on_ready)
            workers["ota"] = await services.enter_async_context(executor)
        device_config = _device_config(config, broker)
        if device_config is not None:
            workers["device-config"] = await services.enter_async_context(
                _supervised("device config", device_config.run)
            )
            on_ready("device config publisher running")
        dashboard = _dashboard_config(config)
        if dashboard is not None:
            await services.enter_async_context(
                _site(create_app(dashboard), dashboard.host, dashboard.port, tls_context(dashboard))
            )
            scheme = "https" if dashboard.tls is not None else "http"
            on_ready(f"dashboard on {scheme}://{dashboard.host}:{dashboard.port}/")
        if config.http.port:
            app = make_app(connectors, config.http, workers)
            await services.enter_async_context(_site(app, config.http.host, config.http.port))
            on_ready(f"HTTP control on http://{config.http.host}:{config.http.port}/status")
        tune_gc_for_streaming()
        await _until_stopped_or_failed(stop, connectors, failures)
        log.info("stopping: the connectors take no new readings and drain what they took")
    log.info("gateway stopped")
    if failures:
        raise GatewayError("; ".join(failures))


async def _start_alerting(
    config: GatewayConfig,
    services: contextlib.AsyncExitStack,
    on_ready: Callable[[str], None],
) -> dict[str, Supervisor]:
    """Alertmanager, when configured (the alert service posts to it unless its own
    `alertmanager.url` says otherwise), then the alert service; its supervisor by name."""
    workers: dict[str, Supervisor] = {}
    alerts = config.alerts
    if config.alertmanager is not None:
        url = await services.enter_async_context(_alertmanager(config.alertmanager))
        on_ready(f"Alertmanager on {url}")
        if alerts is not None and alerts.alertmanager is None:
            settings = AlertmanagerSettings.model_validate({"url": url})
            alerts = alerts.model_copy(update={"alertmanager": settings})
    if alerts is not None:
        workers["alerts"] = await services.enter_async_context(_alert_service(alerts))
        on_ready("alert service running")
    return workers


def _dashboard_config(config: GatewayConfig) -> DashboardConfig | None:
    """The dashboard's settings, with what it shares with the rest of `config` filled in:
    the gateway's Alertmanager (maintenance windows) and the alert service's rule file."""
    dashboard = config.dashboard
    if dashboard is None:
        return None
    updates: dict[str, object] = {}
    if dashboard.alertmanager_url is None and config.alertmanager is not None:
        updates["alertmanager_url"] = config.alertmanager.url
    if "rules_file" not in dashboard.model_fields_set and config.alerts is not None:
        updates["rules_file"] = config.alerts.rules_file
    return dashboard.model_copy(update=updates)


async def _until_stopped_or_failed(
    stop: asyncio.Event, connectors: dict[str, Connector], failures: list[str]
) -> None:
    """Wait for `stop`; a failed connector (its status sees every worker thread) ends the
    wait with its reason in `failures`."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        for connector in connectors.values():
            status = connector.status()
            if status.state == "failed":
                failures.append(f"connector {connector.name!r} failed: {status.reason}")
        if failures:
            return


async def _stop_connector(connector: Connector) -> None:
    await asyncio.to_thread(connector.stop)


async def _shutdown_broker(broker: DurableBroker) -> None:
    if broker.transitions.state == "started":
        log.info("stopping the embedded MQTT broker")
        for intake in broker.intakes:
            intake.abandon()
        try:
            await asyncio.wait_for(broker.shutdown(), BROKER_SHUTDOWN_S)
        except TimeoutError:
            log.warning("the embedded MQTT broker did not close within %d s", BROKER_SHUTDOWN_S)


@contextlib.asynccontextmanager
async def _site(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[None]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
        yield
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _alertmanager(settings: AlertmanagerRun) -> AsyncIterator[str]:
    """Debian's Alertmanager as a child that dies with the gateway (even by SIGKILL); yields
    its URL once ready. Its silences live in `state_dir` across restarts."""
    notifications = load_notifications(settings.notifications)
    local = LocalAlertmanager(settings.state_dir.resolve(), settings.port, notifications)
    # Started from the event loop's thread: the parent-death signal follows the thread.
    proc = local.spawn(die_with_parent=True)
    try:
        await asyncio.to_thread(local.wait_ready, 30.0, proc)
        yield local.url
    finally:
        log.info("stopping Alertmanager")
        await asyncio.to_thread(stop_pid, proc.pid, 10.0)
        with contextlib.suppress(ChildProcessError, subprocess.TimeoutExpired):
            proc.wait(5)


def _device_config(config: GatewayConfig, broker: DurableBroker | None) -> ConfigPublisher | None:
    """The desired-config publisher (gateway/devices_config.py), where a connector carries
    commands to the devices: it reaches Kafka and the devices as that connector does."""
    relay = next((c for c in config.connectors if c.commands is not None), None)
    if relay is None or not config.device_config.enabled:
        return None
    retainer: Retainer
    if broker is not None and _on_embedded_broker(config, relay):
        retainer = EmbeddedRetainer(broker, asyncio.get_running_loop())
    else:
        retainer = MqttRetainer(relay.mqtt)
    kafka = relay.kafka
    return ConfigPublisher(config.device_config, kafka.bootstrap_servers, retainer, kafka.settings)


@contextlib.asynccontextmanager
async def _supervised(
    name: str, target: Callable[[threading.Event], None]
) -> AsyncIterator[Supervisor]:
    """`target` in a supervised thread, restarted with backoff when it fails; stopped last."""
    supervisor = Supervisor(name, target)
    supervisor.start()
    try:
        yield supervisor
    finally:
        await asyncio.to_thread(supervisor.stop, 30)


@contextlib.asynccontextmanager
async def _ota_executor(
    ota: OtaSettings, broker: BrokerSettings, on_ready: Callable[[str], None]
) -> AsyncIterator[Supervisor]:
    """The staged-rollout executor (docs/ota.md), supervised as the alert service is; it
    reaches the devices through the embedded broker unless `ota.mqtt_host`/`mqtt_port` say
    otherwise (Mosquitto)."""
    executor = RolloutExecutor(ota, ota.mqtt_host or broker.host, ota.mqtt_port or broker.port)
    supervisor = Supervisor("ota rollouts", executor.run)
    supervisor.start()
    on_ready("OTA rollout executor running")
    try:
        yield supervisor
    finally:
        await asyncio.to_thread(supervisor.stop, 30)


@contextlib.asynccontextmanager
async def _alert_service(config: ServiceConfig) -> AsyncIterator[Supervisor]:
    """The alert service in a supervised thread: it waits while Kafka is away, and a failure
    restarts it with backoff (one log line and `trackside_worker_restarts_total` each); the
    broker and the connectors keep running either way. Yields the supervisor (`state`,
    `failure`) for health checks."""
    service = AlertService(config, load_rules(config.rules_file))
    async with _supervised("alert service", service.run) as supervisor:
        yield supervisor
