"""Accounts in Debian's headless Chromium: `trackside dashboard --users-file` over HTTPS, sign
in, acknowledge under the account's name, nothing in localStorage, no CSP violation."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from gateway.certs import make_certificates
from gateway.dashboard.accounts import UsersFile
from gateway.localkafka import free_port
from gateway.topics import Topics, create_topics
from tests.fixtures.kafka import KafkaService
from tests.fixtures.processes import LOG_ROOT, ServiceProcess
from tests.gateway.dashboard.records import alert, produce, read_actions

pytestmark = pytest.mark.integration

KEY = "T102/bearing_hot/42/bearing_left_temp"
# Every violation of the page's Content-Security-Policy, as the page itself sees them.
RECORD_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


@pytest.fixture
def desk(kafka: KafkaService, tmp_path: Path) -> Iterator[tuple[str, Topics]]:
    """`trackside dashboard` with two accounts (ana: operator, vic: viewer) over HTTPS."""
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(**{k: f"{v}.{suffix}" for k, v in Topics().model_dump().items()})
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    create_topics(admin, topics, admin.list_topics().topics)
    _, cert_file, key_file = make_certificates(tmp_path / "tls", ["127.0.0.1"])
    users = UsersFile(tmp_path / "users.yaml")
    users.add("ana", "operator", "ana-password")
    users.add("vic", "viewer", "vic-password")
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "dashboard", "--port", str(port)]
    argv += ["--bootstrap-servers", kafka.bootstrap_servers, "--users-file", str(users.path)]
    argv += ["--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)]
    for name in ("telemetry", "device_status", "alerts", "maintenance", "operator_actions"):
        argv += [f"--{name.replace('_', '-')}-topic", getattr(topics, name)]
    service = ServiceProcess("dashboard", argv, "127.0.0.1", port, LOG_ROOT / f"desk-{suffix}.log")
    service.start(timeout=60)
    yield f"https://127.0.0.1:{port}/", topics
    service.stop(timeout=30)
    assert "Traceback" not in service.tail(200), service.tail(200)


def _page(browser: Browser, console: list[str]) -> Page:
    # The certificate is from a private CA the browser does not know.
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(30_000)
    context.add_init_script(RECORD_VIOLATIONS)
    page = context.new_page()

    def keep(message: ConsoleMessage) -> None:
        console.append(message.text)

    page.on("console", keep)
    return page


def _sign_in(page: Page, name: str, password: str) -> None:
    expect(page.locator("#login")).to_be_visible()  # nothing is shown before signing in
    page.fill("#login-name", name)
    page.fill("#login-password", password)
    page.click("#login-ok")


def test_an_operator_signs_in_and_acknowledges_under_the_account(
    desk: tuple[str, Topics], kafka: KafkaService, browser: Browser
) -> None:
    url, topics = desk
    produce(kafka.bootstrap_servers, topics.alerts, [(KEY, alert("T102", "firing"))])
    console: list[str] = []
    page = _page(browser, console)
    page.goto(url)
    _sign_in(page, "ana", "wrong-password")
    expect(page.locator("#login-error")).to_contain_text("wrong name or password")
    _sign_in(page, "ana", "ana-password")
    expect(page.locator("#who")).to_have_text("ana · operator (sign out)")
    button = page.locator(f'.alert[data-key="{KEY}"] button.act')
    button.click()
    expect(button).to_have_text("Ack sent…")
    [(key, action)] = read_actions(kafka.bootstrap_servers, topics.operator_actions, 1)
    assert (key, action["action"], action["by"]) == (KEY, "ack", "ana")

    # The session is an HttpOnly cookie: the page's script can neither see nor store it.
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("document.cookie") == ""
    assert page.evaluate("window.cspViolations") == []
    assert not [m for m in console if "Content Security Policy" in m], console
    page.screenshot(path=LOG_ROOT / "dashboard-signed-in.png", full_page=True)
    page.context.close()


def test_a_viewer_sees_no_action_buttons(
    desk: tuple[str, Topics], kafka: KafkaService, browser: Browser
) -> None:
    url, topics = desk
    produce(kafka.bootstrap_servers, topics.alerts, [(KEY, alert("T102", "firing"))])
    console: list[str] = []
    page = _page(browser, console)
    page.goto(url)
    _sign_in(page, "vic", "vic-password")
    expect(page.locator("#who")).to_have_text("vic · viewer (sign out)")
    expect(page.locator(f'.alert[data-key="{KEY}"]')).to_be_visible()
    expect(page.locator("button.act")).to_have_count(0)
    page.click("#who")  # sign out: the page asks again
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("window.cspViolations") == []
    page.context.close()
