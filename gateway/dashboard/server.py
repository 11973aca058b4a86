"""The dashboard's HTTP server (aiohttp): the page, a JSON API, live updates and actions.

GET  /                            the page (static/index.html, app.js, style.css)
GET  /api/fleet                   every train's summary
GET  /api/trains/{train_id}       one train: values per channel, alert history
GET  /api/alerts[?all=1]          active alerts (or the latest event of every alert)
GET  /api/devices                 the device inventory: every device's status, config drift
GET  /api/rules                   the rule file's levels per channel, descriptions, runbooks
GET  /api/maintenance.json|.csv   flagged trains with their alerts (`?all=1`: cleared ones too)
GET  /api/events                  Server-Sent Events: `snapshot`, then `changes`
POST /api/alerts/{key}/ack        produce an `ack` action     (an operator: see auth.py)
POST /api/trains/{train_id}/clear produce a `clear` action    (same)
POST|DELETE /api/trains/{train_id}/maintenance-window   set or end an Alertmanager silence
POST /api/login, /api/logout      sign in (a session cookie) and out; GET /api/me: who
GET  /healthz                     reader state and record counts
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.dashboard import DashboardError
from gateway.dashboard.actions import (
    ActionError,
    ActionProducer,
    ack_action,
    clear_action,
    window_action,
    window_end_action,
)
from gateway.dashboard.auth import PRINCIPAL, add_auth
from gateway.dashboard.config import DashboardConfig
from gateway.dashboard.export import maintenance_csv, maintenance_report
from gateway.dashboard.fleet import ACTIVE_STATES, Fleet
from gateway.dashboard.inventory import Inventory
from gateway.dashboard.levels import RuleBook, load_rule_book
from gateway.dashboard.live import LiveHub
from gateway.dashboard.reader import FleetReader
from gateway.dashboard.silences import SilenceError, Silences, Window, parse_until

__all__ = ["FLEET", "create_app", "serve", "tls_context"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
HEARTBEAT_S = 15.0

FLEET = web.AppKey("fleet", Fleet)
INVENTORY = web.AppKey("inventory", Inventory)
CONFIG = web.AppKey("config", DashboardConfig)
HUB = web.AppKey("hub", LiveHub)
READER = web.AppKey("reader", FleetReader)
ACTIONS = web.AppKey("actions", ActionProducer)
RULES = web.AppKey("rules", RuleBook)
SILENCES = web.AppKey("silences", Silences)
WINDOWS_EVERY_S = 5.0
NO_ALERTMANAGER = (
    "maintenance windows need Alertmanager: give the dashboard --alertmanager-url "
    "(gateway.yaml: dashboard.alertmanager_url)"
)


def create_app(config: DashboardConfig) -> web.Application:
    """The application; the Kafka reader and producer start and stop with it."""
    app = web.Application()
    rules = load_rule_book(config.rules_file)
    fleet = Fleet(config.history, rules)
    app[CONFIG] = config
    add_auth(app, config)
    app[RULES] = rules
    app[FLEET] = fleet
    app[INVENTORY] = inventory = Inventory()
    app[HUB] = LiveHub(fleet, inventory)
    app.cleanup_ctx.append(_kafka)
    app.on_shutdown.append(_close_streams)
    if config.alertmanager_url is not None:
        app[SILENCES] = Silences(str(config.alertmanager_url))
        app.cleanup_ctx.append(_watch_windows)
    app.router.add_get("/", _index)
    app.router.add_static("/static", STATIC)
    app.router.add_get("/api/fleet", _fleet)
    app.router.add_get("/api/trains/{train_id}", _train)
    app.router.add_get("/api/alerts", _alerts)
    app.router.add_get("/api/devices", _devices)
    app.router.add_get("/api/events", _events)
    app.router.add_get("/api/rules", _rules)
    app.router.add_get("/api/maintenance.json", _maintenance_json)
    app.router.add_get("/api/maintenance.csv", _maintenance_csv)
    app.router.add_post("/api/trains/{train_id}/maintenance-window", _set_window)
    app.router.add_delete("/api/trains/{train_id}/maintenance-window", _end_window)
    app.router.add_post("/api/alerts/{key:.+}/ack", _ack)
    app.router.add_post("/api/trains/{train_id}/clear", _clear)
    app.router.add_get("/healthz", _health)
    return app


async def _kafka(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    app[READER] = FleetReader(config, app[FLEET], app[INVENTORY])
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


async def _watch_windows(app: web.Application) -> AsyncIterator[None]:
    """Read the windows every few seconds, so every page sees one set or ended elsewhere."""

    async def watch() -> None:
        while True:
            await _refresh_windows(app)
            await asyncio.sleep(WINDOWS_EVERY_S)

    task = asyncio.create_task(watch())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await app[SILENCES].close()


async def _refresh_windows(app: web.Application, fresh: bool = False) -> None:
    """Tell the pages the current windows, or why there are none to show."""
    try:
        windows = await app[SILENCES].windows(fresh)
    except SilenceError as exc:
        app[HUB].set_windows({}, str(exc))
    else:
        app[HUB].set_windows({t: w.as_json() for t, w in windows.items()}, None)


async def _windows(request: web.Request) -> tuple[dict[str, Window], str | None]:
    """The windows by train, and the error that hides them (None: fine or not configured)."""
    silences = request.app.get(SILENCES)
    if silences is None:
        return {}, None
    try:
        return await silences.windows(), None
    except SilenceError as exc:
        return {}, str(exc)


def _window_json(windows: dict[str, Window], train_id: str) -> dict[str, Any] | None:
    window = windows.get(train_id)
    return window.as_json() if window is not None else None


async def _index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def _fleet(request: web.Request) -> web.Response:
    windows, error = await _windows(request)
    trains = [
        {**t, "maintenance_window": _window_json(windows, t["train_id"])}
        for t in request.app[FLEET].fleet()
    ]
    return web.json_response({"trains": trains, "maintenance_windows_error": error})


async def _train(request: web.Request) -> web.Response:
    train_id = request.match_info["train_id"]
    train = request.app[FLEET].train(train_id)
    if train is None:
        raise web.HTTPNotFound(text=f"no train {train_id!r} has been seen")
    windows, error = await _windows(request)
    train["maintenance_window"] = _window_json(windows, train_id)
    train["maintenance_windows_error"] = error
    return web.json_response(train)


async def _devices(request: web.Request) -> web.Response:
    return web.json_response({"devices": request.app[INVENTORY].devices()})


async def _alerts(request: web.Request) -> web.Response:
    everything = request.query.get("all") in ("1", "true")
    return web.json_response({"alerts": request.app[FLEET].alerts(active_only=not everything)})


async def _rules(request: web.Request) -> web.Response:
    body = request.app[RULES].levels()
    body["maintenance_windows"] = SILENCES in request.app
    return web.json_response(body)


async def _report(request: web.Request) -> list[dict[str, Any]]:
    windows, _error = await _windows(request)
    everything = request.query.get("all") in ("1", "true")
    return maintenance_report(request.app[FLEET], windows, everything)


async def _maintenance_json(request: web.Request) -> web.Response:
    return web.json_response(
        {"generated_at_ms": int(time.time() * 1000), "trains": await _report(request)}
    )


async def _maintenance_csv(request: web.Request) -> web.Response:
    return web.Response(
        text=maintenance_csv(await _report(request)),
        content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="trackside-maintenance.csv"'},
    )


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
    """The signed-in operator's account name: the `by` recorded with the action, never a typed
    name (the guard in auth.py has refused everyone else already)."""
    if PRINCIPAL not in request or not request[PRINCIPAL].may_act:
        raise web.HTTPForbidden(text="acting needs a signed-in operator")
    return request[PRINCIPAL].name


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


def _silences(request: web.Request) -> Silences:
    silences = request.app.get(SILENCES)
    if silences is None:
        raise web.HTTPConflict(text=NO_ALERTMANAGER)
    return silences


async def _set_window(request: web.Request) -> web.Response:
    by = await _operator(request)
    silences = _silences(request)
    train_id = request.match_info["train_id"]
    if request.app[FLEET].train(train_id) is None:
        raise web.HTTPNotFound(text=f"no train {train_id!r} has been seen")
    try:
        body: Any = await request.json()
        until_ms = parse_until(body.get("until"), int(time.time() * 1000))
        comment = str(body.get("comment") or "").strip()[:500]
    except (ValueError, AttributeError) as exc:
        raise web.HTTPBadRequest(
            text=f'send a JSON body {{"until": <ISO time or ms>, "comment": "..."}}: {exc}'
        ) from exc
    try:
        window = await silences.create(train_id, until_ms, by, comment)
    except SilenceError as exc:
        raise web.HTTPBadGateway(text=str(exc)) from exc
    await _refresh_windows(request.app, fresh=True)
    return await _produce(
        request, train_id, window_action(train_id, by, window.id, until_ms, window.comment)
    )


async def _end_window(request: web.Request) -> web.Response:
    by = await _operator(request)
    silences = _silences(request)
    train_id = request.match_info["train_id"]
    try:
        window = await silences.expire(train_id)
    except SilenceError as exc:
        raise web.HTTPBadGateway(text=str(exc)) from exc
    if window is None:
        raise web.HTTPNotFound(text=f"train {train_id!r} has no maintenance window")
    await _refresh_windows(request.app, fresh=True)
    return await _produce(request, train_id, window_end_action(train_id, by, window.id))


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


def tls_context(config: DashboardConfig) -> ssl.SSLContext | None:
    """The server's TLS context for `config.tls`; None serves plain HTTP."""
    if config.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise DashboardError(
            f"dashboard tls: cannot load cert_file {config.tls.cert_file} with key_file "
            f"{config.tls.key_file} ({exc}); `trackside gateway certs` makes a pair"
        ) from exc
    return context


async def serve(config: DashboardConfig, on_ready: Callable[[str], None]) -> None:
    """Serve until SIGTERM or SIGINT; `on_ready` gets the URL once it listens."""
    runner = web.AppRunner(create_app(config), handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, ssl_context=tls_context(config))
        try:
            await site.start()
        except OSError as exc:
            raise DashboardError(
                f"cannot listen on {config.host}:{config.port} ({exc.strerror}); "
                "choose another --port"
            ) from exc
        host, port = runner.addresses[0][:2]
        scheme = "https" if config.tls is not None else "http"
        on_ready(f"{scheme}://{host}:{port}/")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
