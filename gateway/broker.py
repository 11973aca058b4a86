"""The embedded MQTT broker (amqtt) that the gateway runs when no Mosquitto is configured."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BrokerSettings", "BrokerTls", "broker_config", "serve"]

log = logging.getLogger(__name__)


class BrokerTls(BaseModel):
    """A TLS listener beside the plain one."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    port: int = Field(8883, ge=1, le=65535)
    cert_file: Path
    key_file: Path


class BrokerSettings(BaseModel):
    """Where the embedded broker listens and whom it admits."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    tls: BrokerTls | None = None
    registry: Path | None = Field(
        None, description="Device registry file; without it anyone may connect (development)."
    )


def broker_config(settings: BrokerSettings) -> dict[str, Any]:
    """amqtt's configuration: listeners, and the registry's password and topic checks."""
    listeners: dict[str, Any] = {
        "default": {"type": "tcp", "bind": f"{settings.host}:{settings.port}"}
    }
    if settings.tls:
        listeners["tls"] = {
            "type": "tcp",
            "bind": f"{settings.host}:{settings.tls.port}",
            "ssl": True,
            "certfile": str(settings.tls.cert_file),
            "keyfile": str(settings.tls.key_file),
        }
    plugins: dict[str, Any]
    if settings.registry is None:
        plugins = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
    else:
        registry = {"registry": str(settings.registry)}
        plugins = {
            "gateway.broker_auth.RegistryAuthPlugin": registry,
            "gateway.broker_auth.RegistryTopicPlugin": registry,
        }
    return {"listeners": listeners, "plugins": plugins}


async def serve(settings: BrokerSettings) -> None:
    """Run the broker until SIGTERM or SIGINT, then shut it down cleanly."""
    broker = Broker(broker_config(settings))
    await broker.start()
    log.info("embedded MQTT broker listening on %s:%d", settings.host, settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()
