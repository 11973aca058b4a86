"""The gateway's HTTP control plane: health, status, pause/resume, Prometheus metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
from collections.abc import Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from bridge.connector import Connector, ConnectorStatus
from gateway.config import HttpSettings
from gateway.status_metrics import StatusCollector
from gateway.supervise import Supervisor

__all__ = ["make_app"]


def make_app(
    connectors: dict[str, Connector],
    settings: HttpSettings,
    workers: Mapping[str, Supervisor] | None = None,
) -> web.Application:
    """Routes: GET /healthz, GET /status, POST /connectors/{name}/pause|resume, GET /metrics.

    Health is read from the workers themselves: each connector's status (which looks at every
    thread of it) and each supervised worker (the alert service) by name in `workers`.
    """
    workers = workers or {}

    def connector_status() -> list[tuple[ConnectorStatus, dict[str, object]]]:
        return [
            (s, {**dataclasses.asdict(s), "received": c.received})
            for c in connectors.values()
            for s in [c.status()]
        ]

    def worker_status() -> dict[str, dict[str, object]]:
        return {
            name: {"state": w.state, "restarts": w.restarts, "failure": w.failure}
            for name, w in workers.items()
        }

    async def healthz(_: web.Request) -> web.Response:
        statuses = connector_status()
        unhealthy = [shown for s, shown in statuses if not s.healthy]
        restarting = {n: w for n, w in worker_status().items() if w["state"] == "restarting"}
        if unhealthy or restarting:
            body = {"status": "failed", "connectors": unhealthy, "workers": restarting}
            return web.json_response(body, status=503)
        spooling = [shown for s, shown in statuses if s.mode == "spooling"]
        if spooling:
            return web.json_response({"status": "spooling", "connectors": spooling})
        return web.json_response({"status": "ok"})

    async def get_status(_: web.Request) -> web.Response:
        connectors_shown = [shown for _, shown in connector_status()]
        return web.json_response({"connectors": connectors_shown, "workers": worker_status()})

    def connector(request: web.Request) -> Connector:
        token = settings.token.get_secret_value() if settings.token else None
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token is not None and not hmac.compare_digest(sent.encode(), token.encode()):
            raise web.HTTPUnauthorized(text="send the gateway's http.token as a Bearer token\n")
        name = request.match_info["name"]
        if name not in connectors:
            raise web.HTTPNotFound(text=f"no connector {name!r}; GET /status lists them\n")
        return connectors[name]

    async def pause(request: web.Request) -> web.Response:
        target = connector(request)
        await asyncio.to_thread(target.pause)
        return web.json_response(dataclasses.asdict(target.status()))

    async def resume(request: web.Request) -> web.Response:
        target = connector(request)
        await asyncio.to_thread(target.resume)
        return web.json_response(dataclasses.asdict(target.status()))

    # The process-wide metrics, then the gauges read from these workers at each scrape.
    status_registry = CollectorRegistry()
    status_registry.register(StatusCollector(connectors, workers))

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest() + generate_latest(status_registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", get_status)
    app.router.add_post("/connectors/{name}/pause", pause)
    app.router.add_post("/connectors/{name}/resume", resume)
    app.router.add_get("/metrics", metrics)
    return app
