"""Sign-in, roles, the proxy's header, cross-site guard, security headers and HTTPS: the
dashboard application served over TLS (a certificate from `gateway.certs`) on the real Kafka."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from confluent_kafka.admin import AdminClient

from gateway.certs import make_certificates
from gateway.dashboard.accounts import UsersFile
from gateway.dashboard.auth import COOKIE, CSP
from gateway.dashboard.config import DashboardConfig, DashboardTls
from gateway.dashboard.server import create_app, tls_context
from gateway.localkafka import free_port
from gateway.topics import Topics, create_topics
from tests.fixtures.kafka import KafkaService
from tests.gateway.dashboard.records import alert, produce, read_actions

pytestmark = pytest.mark.integration

KEY = "T102/bearing_hot/42/bearing_left_temp"
PROXY = "127.0.0.2"  # the loopback address the single sign-on proxy's requests come from
ACT = {"X-Trackside": "1"}


@dataclass
class Served:
    url: str
    ca: ssl.SSLContext
    users: UsersFile
    config: DashboardConfig

    def client(self, source: str = "127.0.0.1") -> aiohttp.ClientSession:
        """A browser-like client: keeps cookies (also for an IP address), trusts the CA."""
        connector = aiohttp.TCPConnector(ssl=self.ca, local_addr=(source, 0))
        return aiohttp.ClientSession(
            self.url, connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)
        )


@pytest.fixture
async def served(kafka: KafkaService, tmp_path: Path) -> AsyncIterator[Served]:
    """The dashboard with a users file, the proxy header from PROXY, HTTPS; its own topics."""
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(**{k: f"{v}.{suffix}" for k, v in Topics().model_dump().items()})
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    await asyncio.to_thread(create_topics, admin, topics, admin.list_topics().topics)
    ca_file, cert_file, key_file = make_certificates(tmp_path / "tls", ["127.0.0.1"])
    users = UsersFile(tmp_path / "users.yaml")
    users.add("ana", "operator", "ana-password")
    users.add("vic", "viewer", "vic-password")
    port = free_port()
    config = DashboardConfig(
        bootstrap_servers=kafka.bootstrap_servers,
        topics=topics,
        port=port,
        users_file=users.path,
        trusted_user_header="X-Forwarded-User",
        trusted_role_header="X-Forwarded-Role",
        trusted_proxies=(f"{PROXY}/32",),
        tls=DashboardTls(cert_file=cert_file, key_file=key_file),
    )
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls_context(config)).start()
    ca = ssl.create_default_context(cafile=str(ca_file))
    yield Served(f"https://127.0.0.1:{port}", ca, users, config)
    await runner.cleanup()


async def _login(client: aiohttp.ClientSession, name: str, password: str) -> int:
    async with client.post(
        "/api/login", json={"name": name, "password": password}, headers=ACT
    ) as r:
        return r.status


async def _me(client: aiohttp.ClientSession, **headers: str) -> tuple[int, Any]:
    async with client.get("/api/me", headers=headers) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def test_sign_in_sets_an_httponly_strict_secure_cookie(served: Served) -> None:
    async with served.client() as client:
        assert await _me(client) == (401, {"login": "password", "reads_need_login": True})
        async with client.post("/api/login", json={"name": "ana", "password": "x"}) as r:
            assert r.status == 403  # no X-Trackside: another site's form could send this
        assert await _login(client, "ana", "wrong-password") == 401
        assert await _login(client, "nobody", "ana-password") == 401
        payload = {"name": "ana", "password": "ana-password"}
        async with client.post("/api/login", json=payload, headers=ACT) as response:
            assert response.status == 200
            cookie = response.headers["Set-Cookie"]
        attributes = {a.strip().split("=")[0].lower(): a for a in cookie.split(";")}
        assert cookie.startswith(f"{COOKIE}=")
        assert {"httponly", "secure", "samesite", "path"} <= attributes.keys()
        assert attributes["samesite"].strip() == "SameSite=Strict"
        assert await _me(client) == (200, {"name": "ana", "role": "operator", "via": "session"})
        async with client.post("/api/logout", headers=ACT) as response:
            assert response.status == 204
        assert (await _me(client))[0] == 401


async def test_reads_need_a_sign_in_and_removing_an_account_ends_its_session(
    served: Served,
) -> None:
    async with served.client() as client:
        for path in ("/api/fleet", "/api/alerts", "/api/events", "/api/trains/T1"):
            async with client.get(path) as response:
                assert response.status == 401, path
        for path in ("/", "/static/app.js"):
            async with client.get(path) as response:
                assert response.status == 200, path  # the page, to show the sign-in form
        assert await _login(client, "vic", "vic-password") == 200
        async with client.get("/api/fleet") as response:
            assert response.status == 200
        UsersFile(served.users.path).remove("vic")
        async with client.get("/api/fleet") as response:
            assert response.status == 401


async def test_viewers_cannot_act_and_an_operators_ack_is_recorded_under_the_account(
    served: Served,
) -> None:
    config = served.config
    await asyncio.to_thread(
        produce, config.bootstrap_servers, config.topics.alerts, [(KEY, alert("T102", "firing"))]
    )
    async with served.client() as viewer, served.client() as operator:
        assert await _login(viewer, "vic", "vic-password") == 200
        assert await _login(operator, "ana", "ana-password") == 200
        for _ in range(600):  # the alert arrives through Kafka
            async with operator.get("/api/alerts") as response:
                if (await response.json())["alerts"]:
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the alert did not reach the dashboard within 60 s")
        ack = f"/api/alerts/{KEY}/ack"
        async with viewer.post(ack, json={}, headers=ACT) as response:
            assert response.status == 403
            assert "viewer" in await response.text()
        async with operator.post(ack, json={"by": "Eve"}) as response:
            assert response.status == 403  # the session alone: a cross-site request
        async with operator.post(ack, json={"by": "Eve"}, headers=ACT) as response:
            assert response.status == 202
    actions = await asyncio.to_thread(
        read_actions, config.bootstrap_servers, config.topics.operator_actions, 2, 10
    )
    assert [(key, a["action"], a["by"]) for key, a in actions] == [(KEY, "ack", "ana")]


async def test_the_proxy_header_is_believed_only_from_a_trusted_proxy(served: Served) -> None:
    header = {"X-Forwarded-User": "sam@depot.example"}
    async with served.client() as direct:
        status, _ = await _me(direct, **header)
        assert status == 403  # from 127.0.0.1, not a trusted proxy
        async with direct.get("/api/fleet", headers=header) as response:
            assert response.status == 403
    async with served.client(source=PROXY) as proxy:
        assert await _me(proxy, **header) == (
            200,
            {"name": "sam@depot.example", "role": "viewer", "via": "header"},
        )
        as_operator = {**header, "X-Forwarded-Role": "operator"}
        assert (await _me(proxy, **as_operator))[1]["role"] == "operator"
        assert (await _me(proxy, **{**header, "X-Forwarded-Role": "admin"}))[0] == 403
        async with proxy.post("/api/trains/T9/clear", headers=as_operator) as response:
            assert response.status == 403  # the proxy's sign-on is ambient too: X-Trackside
        async with proxy.post("/api/trains/T9/clear", headers={**as_operator, **ACT}) as r:
            assert r.status == 404  # let through; no such train


async def test_every_answer_carries_the_security_headers(served: Served) -> None:
    async with served.client() as client:
        for path in ("/", "/static/app.js", "/api/fleet", "/healthz", "/nowhere"):
            async with client.get(path) as response:
                assert response.headers["Content-Security-Policy"] == CSP, path
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in CSP and "'unsafe-inline'" not in CSP
    assert "default-src 'self'" in CSP
