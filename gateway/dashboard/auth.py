"""Who may look at the dashboard and who may act, and the headers every answer carries.

A request is recognised, in this order, by a single sign-on proxy's header (only from an
address in `trusted_proxies`), by its session cookie (after `POST /api/login`), or by
`Authorization: Bearer <token>` (the single-operator token mode). `guard` then lets it through:

- `/api/login`, `/api/logout`, `/api/me`, the page and `/healthz`: anyone;
- other `GET /api/...`: anyone in token mode, a signed-in viewer or operator with accounts;
- any other method under `/api/`: an operator only (acknowledge, clear, maintenance windows).

Cross-site requests: the session cookie is `SameSite=Strict`, and every request under `/api/`
that changes something with a session or a proxy's header, and every sign-in, must carry
`X-Trackside: 1`. A browser sends such a header cross-origin only after a CORS preflight, which
this server never grants, so another site's page can neither act under someone's session nor
sign a browser in under an account of its choosing.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.dashboard.accounts import (
    USER_NAME,
    AccountsError,
    Principal,
    Role,
    Sessions,
    UsersFile,
)
from gateway.dashboard.config import DashboardConfig

__all__ = [
    "AUTH",
    "COOKIE",
    "CSP",
    "CSRF_HEADER",
    "PRINCIPAL",
    "Auth",
    "add_auth",
]

log = logging.getLogger(__name__)

COOKIE = "trackside_session"
CSRF_HEADER = "X-Trackside"
SESSION_IDLE_S = 12 * 3600  # a shift: an unused session ends after 12 h
ROLES: dict[str, Role] = {"viewer": "viewer", "operator": "operator"}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_API = frozenset({"/api/login", "/api/logout", "/api/me"})
# No inline script or style, nothing from another origin: every file is served from static/
# (uPlot too, vendored); uPlot sets element.style from script, which CSP allows.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class Auth:
    """The dashboard's sign-in state: its settings, the users file and the sessions."""

    def __init__(self, config: DashboardConfig) -> None:
        self.config = config
        self.users = UsersFile(config.users_file) if config.users_file is not None else None
        self.sessions = Sessions(SESSION_IDLE_S)
        # One password check at a time (a PBKDF2 derivation, ~170 ms on the build machine):
        # a flood of wrong logins costs at most one core, never the event loop.
        self.checking = asyncio.Semaphore(1)

    @property
    def reads_need_login(self) -> bool:
        """True with accounts (a users file or a proxy's header); the token mode reads open."""
        return self.config.users_file is not None or self.config.trusted_user_header is not None

    @property
    def login(self) -> str:
        """What `POST /api/login` takes: `password` (users file), `token`, or `proxy` (none)."""
        if self.users is not None:
            return "password"
        return "token" if self.config.token is not None else "proxy"

    def identify(self, request: web.Request) -> Principal | None:
        """Who sent `request`, or None; a proxy header from elsewhere is refused (403)."""
        by_header = self._from_proxy(request)
        if by_header is not None:
            return by_header
        session_id = request.cookies.get(COOKIE)
        if session_id:
            principal = self.sessions.get(session_id)
            if principal is not None:
                return self._current(session_id, principal)
        token = self.config.token
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if (
            token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(given.encode(), token.get_secret_value().encode())
        ):
            return Principal(self.config.token_operator, "operator", "token")
        return None

    def _from_proxy(self, request: web.Request) -> Principal | None:
        header = self.config.trusted_user_header
        if header is None or header not in request.headers:
            return None
        if not self._trusted(request.remote):
            raise web.HTTPForbidden(
                text=f"{header} is believed only from the addresses in trusted_proxies; "
                "reach the dashboard through the single sign-on proxy"
            )
        name = request.headers[header].strip()
        if not re.match(USER_NAME, name):
            raise web.HTTPForbidden(text=f"{header}: {name!r} is not a user name this accepts")
        role_header = self.config.trusted_role_header
        sent = request.headers.get(role_header, "").strip() if role_header else ""
        role = ROLES.get(sent) if sent else self.config.trusted_default_role
        if role is None:
            raise web.HTTPForbidden(text=f"{role_header}: {sent!r}: use viewer or operator")
        return Principal(name, role, "header")

    def _trusted(self, remote: str | None) -> bool:
        try:
            address = ipaddress.ip_address(remote or "")
        except ValueError:
            return False  # not an IP peer (a Unix socket): never a trusted proxy
        return any(address in network for network in self.config.trusted_proxies)

    def _current(self, session_id: str, principal: Principal) -> Principal | None:
        """The session's principal with its role as the users file has it now."""
        if self.users is None:
            return principal  # the token mode: no file to check against
        try:
            self.users.reload_if_changed()
        except AccountsError as exc:
            log.error("dashboard sign-ins refused until the users file is fixed: %s", exc)
            raise web.HTTPServiceUnavailable(text=f"fix the users file: {exc}") from exc
        user = self.users.users.get(principal.name)
        if user is None:
            self.sessions.drop(session_id)  # removed from the file: signed out now
            return None
        return Principal(user.name, user.role, "session")


AUTH = web.AppKey("auth", Auth)
PRINCIPAL = web.RequestKey("principal", Principal)


def add_auth(app: web.Application, config: DashboardConfig) -> None:
    """Install the guard, the security headers and the login routes on `app`."""
    app[AUTH] = Auth(config)
    app.middlewares.append(_guard)
    app.on_response_prepare.append(_security_headers)
    app.router.add_post("/api/login", _login)
    app.router.add_post("/api/logout", _logout)
    app.router.add_get("/api/me", _me)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/api/"):
        return await handler(request)
    auth = request.app[AUTH]
    unsafe = request.method not in SAFE_METHODS
    principal = auth.identify(request)
    # A browser sends the cookie (or the proxy's sign-on) along with any site's request; the
    # bearer token only when a script of ours adds it. Signing in is guarded too, so no other
    # site can sign a browser in under an account of its choosing.
    ambient = principal is not None and principal.via != "token"
    if unsafe and (ambient or request.path == "/api/login") and not _csrf_header(request):
        raise web.HTTPForbidden(text=f"send the header {CSRF_HEADER}: 1 with this request")
    if principal is not None:
        request[PRINCIPAL] = principal
    if request.path in OPEN_API:
        return await handler(request)
    if principal is None and (unsafe or auth.reads_need_login):
        raise web.HTTPUnauthorized(text=f"sign in first ({_how(auth)})")
    if unsafe and principal is not None and not principal.may_act:
        raise web.HTTPForbidden(
            text=f"{principal.name} is a viewer; acting needs the operator role"
        )
    return await handler(request)


def _csrf_header(request: web.Request) -> bool:
    return request.headers.get(CSRF_HEADER) == "1"


def _how(auth: Auth) -> str:
    return {
        "password": "POST /api/login with your name and password",
        "token": "POST /api/login with the token, or send Authorization: Bearer <token>",
        "proxy": "through the single sign-on proxy",
    }[auth.login]


async def _security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


def _who(principal: Principal) -> dict[str, Any]:
    return {"name": principal.name, "role": principal.role, "via": principal.via}


async def _me(request: web.Request) -> web.Response:
    principal = request.get(PRINCIPAL)
    if principal is not None:
        return web.json_response(_who(principal))
    auth = request.app[AUTH]
    return web.json_response(
        {"login": auth.login, "reads_need_login": auth.reads_need_login}, status=401
    )


async def _login(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    try:
        body: Any = await request.json()
        name = str(body.get("name", "")).strip()
        password = str(body["password"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise web.HTTPBadRequest(text='send a JSON body {"name": ..., "password": ...}') from exc
    principal = await _check(auth, name, password)
    if principal is None:
        log.warning("dashboard sign-in refused for %r from %s", name, request.remote)
        raise web.HTTPUnauthorized(text="wrong name or password")
    old = request.cookies.get(COOKIE)
    if old:
        auth.sessions.drop(old)  # a new id at every sign-in: no session fixation
    response = web.json_response(_who(principal))
    response.set_cookie(
        COOKIE,
        auth.sessions.create(principal),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=auth.config.tls is not None,
    )
    return response


async def _check(auth: Auth, name: str, password: str) -> Principal | None:
    """The principal these credentials sign in as, or None."""
    if auth.users is None:
        token = auth.config.token
        if token is None:
            raise web.HTTPNotFound(text="sign in through the single sign-on proxy")
        if hmac.compare_digest(password.encode(), token.get_secret_value().encode()):
            return Principal(auth.config.token_operator, "operator", "session")
        return None
    users = auth.users
    try:
        users.reload_if_changed()
    except AccountsError as exc:
        log.error("dashboard sign-ins refused until the users file is fixed: %s", exc)
        raise web.HTTPServiceUnavailable(text=f"fix the users file: {exc}") from exc
    async with auth.checking:
        user = await asyncio.to_thread(users.authenticate, name, password)
    return Principal(user.name, user.role, "session") if user is not None else None


async def _logout(request: web.Request) -> web.Response:
    session_id = request.cookies.get(COOKIE)
    if session_id:
        request.app[AUTH].sessions.drop(session_id)
    response = web.Response(status=204)
    response.del_cookie(COOKIE, path="/")
    return response
