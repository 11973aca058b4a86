"""The dashboard's HTTP server (aiohttp): the page, a JSON API, live updates and actions.

GET  /                            the page (static/index.html, app.js, style.css)
GET  /api/fleet                   every train's summary
GET  /api/trains/{train_id}       one train: values per channel, alert history
GET  /api/alerts[?all=1]          active alerts (or the latest event of every alert)
GET  /api/events                  Server-Sent Events: `snapshot`, then `changes`
POST /api/alerts/{key}/ack        produce an `ack` action     (Authorization: Bearer <token>)
POST /api/trains/{train_id}/clear produce a `clear` action    (same), body {"by": "<name>"}
GET  /healthz                     reader state and record counts
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.dashboard import DashboardError
from gateway.dashboard.actions import ActionError, ActionProducer, ack_action, clear_action
from gateway.dashboard.config import DashboardConfig
from gateway.dashboard.fleet import ACTIVE_STATES, Fleet
from gateway.dashboard.live import LiveHub
from gateway.dashboard.reader import FleetReader

__all__ = ["FLEET", "create_app", "serve"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
HEARTBEAT_S = 15.0

FLEET = web.AppKey("fleet", Fleet)
CONFIG = web.AppKey("config", DashboardConfig)
HUB = web.AppKey("hub", LiveHub)
READER = web.AppKey("reader", FleetReader)
ACTIONS = web.AppKey("actions", ActionProducer)


def create_app(config: DashboardConfig) -> web.Application:
    """The application; the Kafka reader and producer start and stop with it."""
    app = web.Application()
    fleet = Fleet(config.history)
    app[CONFIG] = config
    app[FLEET] = fleet
    app[HUB] = LiveHub(fleet)
    app.cleanup_ctx.append(_kafka)
    app.on_shutdown.append(_close_streams)
    app.router.add_get("/", _index)
    app.router.add_static("/static", STATIC)
    app.router.add_get("/api/fleet", _fleet)
    app.router.add_get("/api/trains/{train_id}", _train)
    app.router.add_get("/api/alerts", _alerts)
    app.router.add_get("/api/events", _events)
    app.router.add_post("/api/alerts/{key:.+}/ack", _ack)
    app.router.add_post("/api/trains/{train_id}/clear", _clear)
    app.router.add_get("/healthz", _health)
    return app


async def _kafka(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    app[READER] = FleetReader(config, app[FLEET])
    app[ACTIONS] = ActionProducer(config)
    app[READER].start()
    live = asyncio.create_task(app[HUB].run())
    yield
    live.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await live
    await asyncio.to_thread(app[READER].stop)
    await asyncio.to_thread(app[ACTIONS].close)


async def _close_streams(app: web.Application) -> None:
    app[HUB].close()


async def _index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def _fleet(request: web.Request) -> web.Response:
    return web.json_response({"trains": request.app[FLEET].fleet()})


async def _train(request: web.Request) -> web.Response:
    train_id = request.match_info["train_id"]
    train = request.app[FLEET].train(train_id)
    if train is None:
        raise web.HTTPNotFound(text=f"no train {train_id!r} has been seen")
    return web.json_response(train)


async def _alerts(request: web.Request) -> web.Response:
    everything = request.query.get("all") in ("1", "true")
    return web.json_response({"alerts": request.app[FLEET].alerts(active_only=not everything)})


async def _events(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    queue = hub.subscribe()
    try:
        while True:
            try:
                frame = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except TimeoutError:
                frame = b": keep-alive\n\n"
            if frame is None:
                break
            await response.write(frame)
    except ConnectionResetError:
        pass  # the page went away
    finally:
        hub.unsubscribe(queue)
    return response


async def _operator(request: web.Request) -> str:
    """Check the bearer token; return the operator's name from the body."""
    expected = request.app[CONFIG].token.get_secret_value()
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected.encode()):
        raise web.HTTPUnauthorized(
            text="send Authorization: Bearer <dashboard token>",
            headers={"WWW-Authenticate": 'Bearer realm="trackside"'},
        )
    try:
        body: Any = await request.json()
        by = str(body["by"]).strip()
    except (ValueError, KeyError, TypeError) as exc:
        raise web.HTTPBadRequest(text='send a JSON body {"by": "<your name>"}') from exc
    if not 0 < len(by) <= 64:
        raise web.HTTPBadRequest(text='"by" must be your name, 1 to 64 characters')
    return by


async def _produce(request: web.Request, key: str, action: dict[str, Any]) -> web.Response:
    try:
        await asyncio.wait_for(request.app[ACTIONS].send(key, action), 15)
    except (ActionError, TimeoutError) as exc:
        log.warning("operator action %s for %s not delivered: %s", action["action"], key, exc)
        raise web.HTTPServiceUnavailable(text=f"Kafka did not take the action: {exc}") from exc
    return web.json_response({"action": action}, status=202)


async def _ack(request: web.Request) -> web.Response:
    by = await _operator(request)
    key = request.match_info["key"]
    alert = request.app[FLEET].alert(key)
    if alert is None or alert["state"] not in ACTIVE_STATES:
        raise web.HTTPNotFound(text=f"no active alert {key!r}")
    return await _produce(request, key, ack_action(key, by))


async def _clear(request: web.Request) -> web.Response:
    by = await _operator(request)
    train_id = request.match_info["train_id"]
    if request.app[FLEET].train(train_id) is None:
        raise web.HTTPNotFound(text=f"no train {train_id!r} has been seen")
    return await _produce(request, train_id, clear_action(train_id, by))


async def _health(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    reader = request.app[READER]
    healthy = reader.assigned and reader.last_error is None
    body = {
        "status": "ok" if healthy else "starting" if not reader.assigned else "degraded",
        "kafka_error": reader.last_error,
        "trains": len(fleet),
        "records": fleet.accepted,
        "rejected": fleet.rejected,
    }
    return web.json_response(body, status=200 if healthy else 503)


async def serve(config: DashboardConfig, on_ready: Callable[[str], None]) -> None:
    """Serve until SIGTERM or SIGINT; `on_ready` gets the URL once it listens."""
    runner = web.AppRunner(create_app(config), handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        try:
            await site.start()
        except OSError as exc:
            raise DashboardError(
                f"cannot listen on {config.host}:{config.port} ({exc.strerror}); "
                "choose another --port"
            ) from exc
        host, port = runner.addresses[0][:2]
        on_ready(f"http://{host}:{port}/")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
