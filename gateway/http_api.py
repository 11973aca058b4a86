"""The gateway's HTTP control plane: health, status, pause/resume, Prometheus metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.connector import Connector
from gateway.config import HttpSettings

__all__ = ["make_app"]


def make_app(connectors: dict[str, Connector], settings: HttpSettings) -> web.Application:
    """Routes: GET /healthz, GET /status, POST /connectors/{name}/pause|resume, GET /metrics."""

    def status() -> list[dict[str, object]]:
        return [
            {**dataclasses.asdict(c.status()), "received": c.received} for c in connectors.values()
        ]

    async def healthz(_: web.Request) -> web.Response:
        failed = [s for s in status() if s["state"] == "failed"]
        if failed:
            return web.json_response({"status": "failed", "connectors": failed}, status=503)
        return web.json_response({"status": "ok"})

    async def get_status(_: web.Request) -> web.Response:
        return web.json_response({"connectors": status()})

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

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", get_status)
    app.router.add_post("/connectors/{name}/pause", pause)
    app.router.add_post("/connectors/{name}/resume", resume)
    app.router.add_get("/metrics", metrics)
    return app
