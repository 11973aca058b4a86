"""Per-device credentials, client ids and topic ACLs from one registry, on both brokers, with
TLS. The devices are paho-mqtt clients."""

from __future__ import annotations

import contextlib
import queue
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gateway.certs import make_certificates
from gateway.localkafka import free_port
from gateway.registry import Registry
from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.integration


@dataclass
class Secured:
    broker: BrokerHandle
    tls_port: int
    ca_file: Path
    passwords: dict[str, str]


@pytest.fixture(params=["mosquitto", "amqtt"])
def secured(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    mosquitto_factory: Callable[..., BrokerHandle],
    amqtt_factory: Callable[..., BrokerHandle],
) -> Iterator[Secured]:
    registry = Registry(tmp_path / "devices.yaml")
    passwords = {
        "device-1": registry.add_device(1, "T1"),
        "device-2": registry.add_device(2, "T1"),
        "observer": registry.add_service("observer"),
        "trackside-bridge": registry.add_service("trackside-bridge"),
    }
    ca_file, cert_file, key_file = make_certificates(tmp_path / "tls", ["127.0.0.1"])
    tls_port = free_port()
    if request.param == "mosquitto":
        registry.write_mosquitto_files(tmp_path / "passwd", tmp_path / "acl")
        # As docs/raspberry-pi.md configures it: client id = account name on every listener.
        broker = mosquitto_factory(
            "use_username_as_clientid true\nallow_anonymous false\n"
            f"password_file {tmp_path / 'passwd'}\nacl_file {tmp_path / 'acl'}\n"
            f"listener {tls_port} 127.0.0.1\n"
            f"certfile {cert_file}\nkeyfile {key_file}\nuse_username_as_clientid true\n"
        )
    else:
        broker = amqtt_factory(
            "--registry", str(registry.path), "--tls-port", str(tls_port),
            "--cert", str(cert_file), "--key", str(key_file),
        )  # fmt: skip
    yield Secured(broker, tls_port, ca_file, passwords)


def logged(broker: BrokerHandle, text: str) -> bool:
    """Whether the broker's log holds `text` yet."""
    return text in broker.log_file.read_text()


def own_client_id(username: str) -> str:
    """The client id an account connects with: a device the firmware's `trackside-<id>`."""
    return (
        "trackside-" + username.removeprefix("device-")
        if username.startswith("device-")
        else username
    )


def connect(
    port: int,
    username: str,
    password: str,
    ca_file: Path | None = None,
    client_id: str | None = None,
    clean_session: bool = True,
) -> tuple[mqtt.Client, mqtt.ReasonCode]:
    """A connected client (loop running) and the broker's CONNACK reason."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=own_client_id(username) if client_id is None else client_id,
        clean_session=clean_session,
    )
    client.username_pw_set(username, password)
    if ca_file is not None:
        client.tls_set(ca_certs=str(ca_file), cert_reqs=ssl.CERT_REQUIRED)
    answer: queue.Queue[mqtt.ReasonCode] = queue.Queue()
    client.on_connect = lambda _c, _u, _f, reason, _p: answer.put(reason)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        reason = answer.get(timeout=20)
    except queue.Empty:
        reason = mqtt.ReasonCode(mqtt.PacketTypes.CONNACK, "Not authorized")
    return client, reason


def observe(secured: Secured) -> tuple[mqtt.Client, queue.Queue[tuple[str, bytes]]]:
    client, reason = connect(secured.broker.port, "observer", secured.passwords["observer"])
    assert not reason.is_failure, reason
    seen: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscribed: queue.Queue[list[mqtt.ReasonCode]] = queue.Queue()
    client.on_message = lambda _c, _u, msg: seen.put((msg.topic, msg.payload))
    client.on_subscribe = lambda _c, _u, _m, reasons, _p: subscribed.put(reasons)
    client.subscribe("trackside/#", qos=1)
    assert not subscribed.get(timeout=10)[0].is_failure
    return client, seen


def test_a_device_cannot_publish_as_another(secured: Secured) -> None:
    observer, seen = observe(secured)
    for topic in ("trackside/v1/T1/2/telemetry", "trackside/v1/T9/1/telemetry"):
        spoofer, reason = connect(secured.broker.port, "device-1", secured.passwords["device-1"])
        assert not reason.is_failure, reason
        # amqtt drops the message; Mosquitto 2.0.11 also drops the connection.
        with contextlib.suppress(RuntimeError):
            spoofer.publish(topic, b"spoofed", qos=1).wait_for_publish(10)
        spoofer.loop_stop()
        spoofer.disconnect()
    device, reason = connect(secured.broker.port, "device-1", secured.passwords["device-1"])
    assert not reason.is_failure, reason
    device.publish("trackside/v1/T1/1/telemetry", b"own", qos=1).wait_for_publish(10)
    # The device's own reading comes after the refused ones: once it is here, they would be too.
    assert seen.get(timeout=10) == ("trackside/v1/T1/1/telemetry", b"own")
    assert seen.empty()
    for client in (device, observer):
        client.loop_stop()
        client.disconnect()


def test_a_device_cannot_read_another_devices_commands(secured: Secured) -> None:
    device, reason = connect(secured.broker.port, "device-1", secured.passwords["device-1"])
    assert not reason.is_failure, reason
    received: queue.Queue[str] = queue.Queue()
    granted: queue.Queue[list[mqtt.ReasonCode]] = queue.Queue()
    device.on_message = lambda _c, _u, msg: received.put(msg.topic)
    device.on_subscribe = lambda _c, _u, _m, reasons, _p: granted.put(reasons)
    # amqtt refuses the second filter in the SUBACK; Mosquitto grants it but delivers nothing.
    device.subscribe([("trackside/v1/T1/1/cmd", 1), ("trackside/v1/T1/2/cmd", 1)])
    assert not granted.get(timeout=10)[0].is_failure
    operator, reason = connect(secured.broker.port, "observer", secured.passwords["observer"])
    assert not reason.is_failure, reason
    operator.publish("trackside/v1/T1/2/cmd", b"{}", qos=1).wait_for_publish(10)
    operator.publish("trackside/v1/T1/1/cmd", b"{}", qos=1).wait_for_publish(10)
    assert received.get(timeout=10) == "trackside/v1/T1/1/cmd"
    assert received.empty()
    for client in (device, operator):
        client.loop_stop()
        client.disconnect()


def test_wrong_password_and_unknown_user_are_refused(secured: Secured) -> None:
    for username, password in (("device-1", "wrong"), ("nobody", "x"), ("device-1", "")):
        client, reason = connect(secured.broker.port, username, password)
        client.loop_stop()
        client.disconnect()
        assert reason.is_failure, (username, reason)


def test_tls_listener(secured: Secured) -> None:
    observer, seen = observe(secured)
    device, reason = connect(
        secured.tls_port, "device-1", secured.passwords["device-1"], secured.ca_file
    )
    assert not reason.is_failure, reason
    device.publish("trackside/v1/T1/1/status", b'{"state": "online"}', qos=1).wait_for_publish(10)
    assert seen.get(timeout=10) == ("trackside/v1/T1/1/status", b'{"state": "online"}')
    for client in (device, observer):
        client.loop_stop()
        client.disconnect()


def test_revoked_device_is_refused_without_restart(
    tmp_path: Path, amqtt_factory: Callable[..., BrokerHandle]
) -> None:
    registry = Registry(tmp_path / "devices.yaml")
    password = registry.add_device(5, "T5")
    broker = amqtt_factory("--registry", str(registry.path))
    client, reason = connect(broker.port, "device-5", password)
    client.loop_stop()
    client.disconnect()
    assert not reason.is_failure
    registry.revoke("device-5")
    client, reason = connect(broker.port, "device-5", password)
    client.loop_stop()
    client.disconnect()
    assert reason.is_failure


@pytest.mark.parametrize("clean_session", [True, False], ids=["clean", "persistent"])
def test_a_device_cannot_take_over_the_bridges_or_another_devices_session(
    secured: Secured, clean_session: bool
) -> None:
    """amqtt refuses the CONNECT (and logs the account); Mosquitto gives the impostor its own
    session under its account name. Either way the bridge and the device keep theirs."""
    port, passwords = secured.broker.port, secured.passwords
    bridge, reason = connect(
        port, "trackside-bridge", passwords["trackside-bridge"], clean_session=False
    )
    assert not reason.is_failure, reason
    seen: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscribed: queue.Queue[list[mqtt.ReasonCode]] = queue.Queue()
    bridge.on_message = lambda _c, _u, msg: seen.put((msg.topic, msg.payload))
    bridge.on_subscribe = lambda _c, _u, _m, reasons, _p: subscribed.put(reasons)
    bridge.subscribe("trackside/#", qos=1)
    assert not subscribed.get(timeout=10)[0].is_failure
    device, reason = connect(port, "device-1", passwords["device-1"])
    assert not reason.is_failure, reason
    dropped: list[str] = []
    bridge.on_disconnect = lambda *_: dropped.append("bridge")
    device.on_disconnect = lambda *_: dropped.append("device-1")

    for victim in ("trackside-bridge", "trackside-1"):
        impostor, reason = connect(
            port, "device-2", passwords["device-2"], client_id=victim, clean_session=clean_session
        )
        if secured.broker.name == "amqtt":
            assert reason.is_failure, (victim, reason)
            refused = f"refused MQTT client id '{victim}' for account 'device-2'"
            wait_until(partial(logged, secured.broker, refused), 20, "the refusal's log line")
        else:
            assert not reason.is_failure, (victim, reason)
        impostor.loop_stop()
        impostor.disconnect()
    # Both still hold their sessions: the device's reading reaches the bridge, nobody dropped.
    device.publish("trackside/v1/T1/1/telemetry", b"after", qos=1).wait_for_publish(10)
    assert seen.get(timeout=10) == ("trackside/v1/T1/1/telemetry", b"after")
    assert dropped == []
    for client in (device, bridge):
        client.loop_stop()
        client.disconnect()
    if secured.broker.name == "mosquitto":
        # Its log names the account the impostor connected as, and never the id it asked for
        # (the log is block-buffered: complete once the broker has stopped).
        secured.broker.stop()
        text = secured.broker.log_file.read_text()
        assert text.count("as device-2 (") == 2, text
        assert "as trackside-1 (" not in text
        assert text.count("as trackside-bridge (") == 1


def test_a_wrong_password_cannot_silence_the_bridge(
    tmp_path: Path, amqtt_factory: Callable[..., BrokerHandle]
) -> None:
    """amqtt 0.12.1 deletes a client id's session before it authenticates the CONNECT; the
    registry check runs before that, so not even a failed login reaches the session."""
    registry = Registry(tmp_path / "devices.yaml")
    device_password = registry.add_device(1, "T1")
    bridge_password = registry.add_service("trackside-bridge")
    broker = amqtt_factory("--registry", str(registry.path))
    bridge, reason = connect(broker.port, "trackside-bridge", bridge_password, clean_session=False)
    assert not reason.is_failure, reason
    seen: queue.Queue[str] = queue.Queue()
    subscribed: queue.Queue[list[mqtt.ReasonCode]] = queue.Queue()
    bridge.on_message = lambda _c, _u, msg: seen.put(msg.topic)
    bridge.on_subscribe = lambda _c, _u, _m, reasons, _p: subscribed.put(reasons)
    bridge.subscribe("trackside/#", qos=1)
    assert not subscribed.get(timeout=10)[0].is_failure
    for clean_session in (True, False):
        intruder, reason = connect(
            broker.port,
            "nobody",
            "guess",
            client_id="trackside-bridge",
            clean_session=clean_session,
        )
        intruder.loop_stop()
        intruder.disconnect()
        assert reason.is_failure
    device, reason = connect(broker.port, "device-1", device_password)
    assert not reason.is_failure, reason
    device.publish("trackside/v1/T1/1/telemetry", b"x", qos=1).wait_for_publish(10)
    assert seen.get(timeout=10) == "trackside/v1/T1/1/telemetry"
    assert "refused MQTT login for 'nobody'" in broker.log_file.read_text()
    for client in (device, bridge):
        client.loop_stop()
        client.disconnect()
