"""The firmware over TLS on the MicroPython unix port, against Mosquitto's and the embedded
broker's TLS listeners: a device with the gateway's CA connects and publishes; a device given
another CA, or reaching the gateway under a name its certificate does not carry, refuses, says
so once on its console, and keeps retrying."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.certs import make_certificates
from gateway.devicetools.deploy import ca_board_file
from gateway.localkafka import free_port
from tests.fixtures import micropython
from tests.fixtures.micropython import UnixDevice
from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.processes import LOG_ROOT

from .conftest import Observer

pytestmark = pytest.mark.integration

Boot = Callable[..., UnixDevice]
Observe = Callable[[BrokerHandle, UnixDevice], Observer]
REFUSED = "tls: refused the gateway's certificate"


@dataclass(frozen=True)
class Gateway:
    """A broker with a plain listener (for the observer) and a TLS one (for the device)."""

    broker: BrokerHandle
    tls_port: int
    ca_file: Path


@pytest.fixture(autouse=True)
def tls_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS takes 3.8 KB more of the app's heap on the 64-bit unix port (context and session;
    the smallest heap of the footprint scenario went from 48 to 57 KiB): these devices get
    8 KiB more than the others."""
    monkeypatch.setattr(micropython, "HEAP_BYTES", micropython.HEAP_BYTES + 8 * 1024)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three CAs with a server certificate each: the gateway's for 127.0.0.1, another
    gateway's for 127.0.0.1, and one for a host name the devices do not use."""
    root = tmp_path_factory.mktemp("certs")
    return {
        name: make_certificates(root / name, hosts)[0].parent
        for name, hosts in (("gateway", ["127.0.0.1"]), ("other", ["127.0.0.1"]),
                            ("misnamed", ["gateway.invalid"]))
    }


def _mosquitto(factory: Callable[..., BrokerHandle], certs: Path) -> Gateway:
    tls_port = free_port()
    broker = factory(
        f"listener {tls_port} 127.0.0.1\n"
        f"certfile {certs / 'server.pem'}\nkeyfile {certs / 'server.key'}\n"
    )
    return Gateway(broker, tls_port, certs / "ca.pem")


@pytest.fixture
def mosquitto_tls(
    mosquitto_factory: Callable[..., BrokerHandle], certificates: dict[str, Path]
) -> Gateway:
    """Mosquitto with the gateway's certificate on its TLS listener."""
    return _mosquitto(mosquitto_factory, certificates["gateway"])


@pytest.fixture
def amqtt_tls(certificates: dict[str, Path]) -> Iterator[Gateway]:
    """`trackside broker run` with the gateway's certificate on its TLS listener."""
    certs = certificates["gateway"]
    port, tls_port = free_port(), free_port()
    log_file = LOG_ROOT / f"amqtt-tls-{port}-{uuid.uuid4().hex[:6]}" / "amqtt.log"
    broker = BrokerHandle(
        "amqtt",
        [sys.executable, "-m", "gateway", "broker", "run", "--port", str(port),
         "--tls-port", str(tls_port), "--cert", str(certs / "server.pem"),
         "--key", str(certs / "server.key")],
        "127.0.0.1", port, log_file,
    )
    broker.start(timeout=30)
    yield Gateway(broker, tls_port, certs / "ca.pem")
    broker.stop()


def _boot(gateway: Gateway, ca_file: Path, unix_device: Boot, observe: Observe,
          **broker: object) -> Observer:
    """A device that trusts `ca_file` (deployed as `trackside deploy --tls` does), observed on
    the plain listener."""
    device = unix_device(
        gateway.broker, boot=False,
        broker={"host": "127.0.0.1", "port": gateway.tls_port, "tls": True, **broker},
    )
    ca = ca_board_file(ca_file)
    (device.board_dir / ca.target).write_bytes(ca.data)
    observer = observe(gateway.broker, device)
    device.start()
    return observer


@pytest.mark.parametrize("broker", ["mosquitto_tls", "amqtt_tls"])
def test_a_device_with_the_gateway_ca_connects_over_tls_and_publishes(
    broker: str, request: pytest.FixtureRequest, unix_device: Boot, observe: Observe
) -> None:
    gateway: Gateway = request.getfixturevalue(broker)
    obs = _boot(gateway, gateway.ca_file, unix_device, observe)
    readings = obs.wait(lambda: len(obs.readings()) >= 5 and obs.readings(), "5 readings")
    assert [r[3] for r in readings[:5]] == list(range(5))
    status = obs.wait(lambda: obs.json("status"), "the status")[-1]
    assert status["state"] == "online"
    log = obs.device.log()
    assert "mqtt: connected" in log and REFUSED not in log and "retry in" not in log


def test_a_device_given_another_ca_refuses_and_says_so_once(
    mosquitto_tls: Gateway, certificates: dict[str, Path], unix_device: Boot, observe: Observe
) -> None:
    obs = _boot(mosquitto_tls, certificates["other"] / "ca.pem", unix_device, observe)
    obs.wait(lambda: obs.device.log().count("retry in") >= 3, "three refused attempts")
    log = obs.device.log()
    assert log.count(REFUSED) == 1, log
    assert "not correctly signed by the trusted CA" in log
    assert "mqtt: connected" not in log
    assert not obs.payloads("status") and not obs.readings()  # no CONNECT ever went out


def test_a_device_checks_the_gateway_host_name(
    mosquitto_factory: Callable[..., BrokerHandle], certificates: dict[str, Path],
    unix_device: Boot, observe: Observe,
) -> None:
    # The right CA, but its certificate names gateway.invalid, and the device dials 127.0.0.1.
    gateway = _mosquitto(mosquitto_factory, certificates["misnamed"])
    obs = _boot(gateway, gateway.ca_file, unix_device, observe)
    obs.wait(lambda: obs.device.log().count("retry in") >= 2, "two refused attempts")
    log = obs.device.log()
    assert log.count(REFUSED) == 1 and "does not match" in log, log
    assert not obs.readings()
