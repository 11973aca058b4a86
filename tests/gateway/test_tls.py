"""The embedded broker with its plain listener off: only TLS is served, a plain connection is
refused, and a configuration that would listen nowhere is refused naming the key."""

from __future__ import annotations

import socket
import ssl
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError
from typer.testing import CliRunner

from bridge.config import ConfigError
from gateway.broker import BrokerSettings, BrokerTls, broker_config
from gateway.certs import make_certificates
from gateway.cli import app
from gateway.config import load_gateway_config
from gateway.localkafka import free_port
from gateway.registry import Registry
from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.processes import LOG_ROOT


def test_plain_off_without_tls_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="plain is false and tls is not set"):
        BrokerSettings(plain=False)
    config = tmp_path / "gateway.yaml"
    config.write_text("broker:\n  plain: false\n")
    with pytest.raises(ConfigError, match=rf"{config}: broker: .*plain is false.*set tls"):
        load_gateway_config(config)


def test_plain_off_leaves_only_the_tls_listener(tmp_path: Path) -> None:
    tls = BrokerTls(port=8883, cert_file=tmp_path / "server.pem", key_file=tmp_path / "key")
    listeners = broker_config(BrokerSettings(plain=False, tls=tls))["listeners"]
    # amqtt needs a listener named "default": it stays, bound nowhere.
    assert listeners["default"]["bind"] is None
    assert listeners["tls"]["bind"] == "127.0.0.1:8883" and listeners["tls"]["ssl"] is True
    both = broker_config(BrokerSettings(tls=tls))["listeners"]
    assert both["default"]["bind"] == "127.0.0.1:1883"


def test_cli_refuses_no_plain_without_tls() -> None:
    result = CliRunner().invoke(app, ["broker", "run", "--no-plain"])
    assert result.exit_code == 2
    assert "--tls-port" in result.output


class TlsBroker:
    """`trackside broker run --no-plain` with a registry and the gateway's certificate."""

    def __init__(self, root: Path) -> None:
        self.ca_file, cert, key = make_certificates(root / "certs", ["127.0.0.1"])
        self.other_ca, _, _ = make_certificates(root / "other", ["127.0.0.1"])
        registry = Registry(root / "devices.yaml")
        self.password = registry.add_device(42, "T42")
        self.plain_port, self.tls_port = free_port(), free_port()
        log_file = LOG_ROOT / f"amqtt-no-plain-{uuid.uuid4().hex[:6]}" / "amqtt.log"
        self.process = BrokerHandle(
            "amqtt",
            [sys.executable, "-m", "gateway", "broker", "run", "--no-plain",
             "--port", str(self.plain_port), "--tls-port", str(self.tls_port),
             "--cert", str(cert), "--key", str(key), "--registry", str(root / "devices.yaml")],
            "127.0.0.1", self.tls_port, log_file,  # ready once the TLS listener accepts
        )

    def connect(self, ca_file: Path) -> Any:
        """CONNECT as device 42 over TLS, trusting `ca_file`: the reason code of the CONNACK,
        or the exception that stopped the handshake."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="trackside-42")
        client.username_pw_set("device-42", self.password)
        client.tls_set(ca_certs=str(ca_file))
        answered = threading.Event()
        reasons: list[Any] = []

        def on_connect(*args: Any) -> None:
            reasons.append(args[3])
            answered.set()

        client.on_connect = on_connect
        try:
            client.connect("127.0.0.1", self.tls_port)
        except (ssl.SSLError, OSError) as exc:
            return exc
        client.loop_start()
        try:
            assert answered.wait(60), "no CONNACK over TLS"
            return reasons[0]
        finally:
            client.disconnect()
            client.loop_stop()


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    broker = TlsBroker(tmp_path)
    broker.process.start(timeout=30)
    yield broker
    broker.process.stop()


@pytest.mark.integration
def test_with_the_plain_listener_off_only_tls_is_served(tls_broker: TlsBroker) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", tls_broker.plain_port), timeout=5).close()
    reason = tls_broker.connect(tls_broker.ca_file)
    assert isinstance(reason, mqtt.ReasonCode) and not reason.is_failure, reason
    refused = tls_broker.connect(tls_broker.other_ca)  # a client that pins another CA
    assert isinstance(refused, ssl.SSLCertVerificationError), refused
