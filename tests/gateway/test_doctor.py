"""`trackside doctor` against a real running gateway (embedded broker with TLS and a registry,
one connector, the alert service) on the real Kafka: all green, then each broken case made
by a real change (a stopped process, a wrong port, chmod or a read-only mount, a bad file, a
Kafka topic altered or deleted), each checked by exit status, its red line and `--json`."""

from __future__ import annotations

import datetime
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.record import KafkaRecord
from bridge.spool import Spool
from gateway.certs import make_certificates
from gateway.doctor.files import Backlog, may_access, spool_backlog
from gateway.localkafka import free_port
from gateway.registry import Registry
from gateway.topics import Topics
from tests.fixtures.kafka import KafkaService
from tests.fixtures.processes import LOG_ROOT
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.integration

TOKEN = "doctor-test-token"


@dataclass
class Gateway:
    """A running `trackside gateway run` and what it was started with."""

    home: Path
    config: Path
    topics: Topics
    dead_letter: str
    bootstrap_servers: str
    http: str
    process: subprocess.Popen[bytes]

    @property
    def spool(self) -> Path:
        return self.home / "spool" / "telemetry"


def _admin(bootstrap_servers: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})


def _topic_names(bootstrap_servers: str) -> set[str]:
    return set(_admin(bootstrap_servers).list_topics(timeout=10).topics)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def gateway(kafka: KafkaService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    home = tmp_path_factory.mktemp("doctor")
    prefix = f"doctor-{uuid.uuid4().hex[:8]}"
    topics = Topics.with_prefix(prefix)
    dead_letter = f"{prefix}.dead-letter"
    Registry(home / "devices.yaml").add_device(7, "T7")
    make_certificates(home / "tls", ["127.0.0.1"])
    admin = _admin(kafka.bootstrap_servers)  # held: its futures fail once it is collected
    for future in admin.create_topics([NewTopic(dead_letter, 1)]).values():
        future.result()
    http_port = free_port()
    config = home / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "broker": {
                    "port": free_port(),
                    "registry": "devices.yaml",
                    "tls": {
                        "port": free_port(),
                        "cert_file": "tls/server.pem",
                        "key_file": "tls/server.key",
                    },
                },
                "connectors": [
                    {
                        "name": "telemetry",
                        "kafka": {
                            "bootstrap_servers": kafka.bootstrap_servers,
                            "topic": topics.telemetry,
                        },
                        "errors": {"deadletterqueue_topic_name": dead_letter},
                        "commands": {"topic": topics.commands, "group_id": f"{prefix}-commands"},
                        "spool": {"path": "spool/telemetry"},
                    }
                ],
                "alerts": {
                    "kafka": {
                        "bootstrap_servers": kafka.bootstrap_servers,
                        "group_id": f"{prefix}-alerts",
                        "transactional_id": f"{prefix}-alerts-0",
                    },
                    "topics": topics.model_dump(),
                },
                "http": {"port": http_port, "token": TOKEN},
            }
        )
    )
    config.chmod(0o600)  # it holds a token: the doctor warns about a file everybody may read
    log_file = LOG_ROOT / f"doctor-gateway-{prefix}" / "gateway.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "gateway", "run", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    http = f"http://127.0.0.1:{http_port}"
    try:
        wait_until(lambda: _answers(f"{http}/healthz"), 60, f"the gateway up (log {log_file})")
        wanted = {*topics.model_dump().values(), dead_letter}
        # The alert service creates its topics once it has started.
        wait_until(lambda: wanted <= _topic_names(kafka.bootstrap_servers), 60, "the topics")
        yield Gateway(home, config, topics, dead_letter, kafka.bootstrap_servers, http, process)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)


def doctor(config: Path, *options: str) -> tuple[int, dict[str, Any]]:
    """Run `trackside doctor --json` as the operator would; its exit status and document."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "doctor", "-c", str(config), "--json", *options],
        capture_output=True,
        timeout=120,
        check=False,
    )
    return done.returncode, json.loads(done.stdout)


def lines(report: dict[str, Any], status: str) -> dict[str, dict[str, Any]]:
    """The report's lines with `status`, by name."""
    return {c["name"]: c for c in report["checks"] if c["status"] == status}


def a_copy(gateway: Gateway, change: dict[str, Any]) -> Path:
    """The gateway's file with top-level keys changed, beside it (relative paths still hold)."""
    raw = yaml.safe_load(gateway.config.read_text())
    copy = gateway.config.with_name(f"changed-{uuid.uuid4().hex[:6]}.yaml")
    copy.write_text(yaml.safe_dump({**raw, **change}))
    copy.chmod(0o600)
    return copy


def test_a_healthy_gateway_is_all_green(gateway: Gateway) -> None:
    status, report = doctor(gateway.config)
    assert (status, lines(report, "warn"), lines(report, "fail")) == (0, {}, {})
    assert report["ok"] is True
    names = [c["name"] for c in report["checks"]]
    for topic in {*gateway.topics.model_dump().values(), gateway.dead_letter}:
        assert f"topic {topic}" in names
    kafka = f"kafka {gateway.bootstrap_servers}"
    expected = {
        *("config", "gateway user", "config file", kafka, "tls key", "tls certificate"),
        *("device registry", "spool telemetry", "spool telemetry disk", f"clock vs {kafka}"),
        *("connector telemetry", "worker alerts", "versions"),
    }
    assert expected <= set(names)
    assert sum(name.startswith("mqtt broker") for name in names) == 2  # plain and TLS
    assert all(c["fix"] is None for c in report["checks"])
    assert "who listens on port" in lines(report, "ok")["gateway user"]["detail"]

    text = subprocess.run(
        [sys.executable, "-m", "gateway", "doctor", "-c", str(gateway.config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert text.returncode == 0
    assert "FAIL" not in text.stdout and "0 warning(s), 0 failed" in text.stdout


def test_kafka_unreachable_is_red(gateway: Gateway) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    raw = yaml.safe_load(gateway.config.read_text())
    raw["connectors"][0]["kafka"]["bootstrap_servers"] = nowhere
    raw["alerts"]["kafka"]["bootstrap_servers"] = nowhere
    status, report = doctor(a_copy(gateway, raw), "--timeout", "1")
    assert status == 1
    failed = lines(report, "fail")
    assert list(failed) == [f"kafka {nowhere}"]
    assert "trackside kafka up" in failed[f"kafka {nowhere}"]["fix"]
    assert not [c for c in report["checks"] if c["kind"] in ("topic", "clock")]


def _set_cleanup_policy(bootstrap_servers: str, topic: str, policy: str) -> None:
    entry = ConfigEntry("cleanup.policy", policy, incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    admin = _admin(bootstrap_servers)
    for future in admin.incremental_alter_configs([resource]).values():
        future.result()


def _created(bootstrap_servers: str, topic: NewTopic) -> bool:
    """Create `topic`; False while Kafka still deletes its namesake."""
    admin = _admin(bootstrap_servers)
    try:
        admin.create_topics([topic])[topic.topic].result()
    except KafkaException:
        return False
    return True


def test_a_missing_topic_or_a_wrong_cleanup_policy_is_red(gateway: Gateway) -> None:
    servers, topics = gateway.bootstrap_servers, gateway.topics
    _set_cleanup_policy(servers, topics.telemetry, "compact")
    admin = _admin(servers)
    for future in admin.delete_topics([topics.maintenance, gateway.dead_letter]).values():
        future.result()
    gone = {topics.maintenance, gateway.dead_letter}
    wait_until(lambda: not gone & _topic_names(servers), 30, "the topics deleted")
    try:
        status, report = doctor(gateway.config)
    finally:
        _set_cleanup_policy(servers, topics.telemetry, "delete")
        maintenance = NewTopic(topics.maintenance, 1, config={"cleanup.policy": "compact"})
        wait_until(lambda: _created(servers, maintenance), 60, "the maintenance topic again")
        wait_until(lambda: _created(servers, NewTopic(gateway.dead_letter, 1)), 60, "dead letters")
    assert status == 1
    failed = lines(report, "fail")
    assert set(failed) == {f"topic {topics.telemetry}", f"topic {topics.maintenance}"}
    assert "cleanup.policy compact" in failed[f"topic {topics.telemetry}"]["detail"]
    assert "cleanup.policy=delete" in failed[f"topic {topics.telemetry}"]["fix"]
    assert failed[f"topic {topics.maintenance}"]["detail"].startswith("missing")
    assert "cleanup.policy=compact" in failed[f"topic {topics.maintenance}"]["fix"]
    # Kafka here creates topics on first use: a missing dead-letter topic is only yellow.
    warned = lines(report, "warn")
    assert "creates it on first use" in warned[f"topic {gateway.dead_letter}"]["detail"]


def _certificate(key_file: Path, valid_days: float) -> bytes:
    """A certificate for the gateway's own key, ending `valid_days` from now (negative: past)."""
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=400))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_an_expiring_certificate_is_yellow_and_an_expired_one_red(gateway: Gateway) -> None:
    cert_file = gateway.home / "tls" / "server.pem"
    original = cert_file.read_bytes()
    try:
        cert_file.write_bytes(_certificate(gateway.home / "tls" / "server.key", 10.5))
        expiring_status, expiring = doctor(gateway.config)
        cert_file.write_bytes(_certificate(gateway.home / "tls" / "server.key", -1))
        expired_status, expired = doctor(gateway.config)
    finally:
        cert_file.write_bytes(original)
    assert expiring_status == 0  # yellow only
    warned = lines(expiring, "warn")
    assert "10 day(s) left" in warned["tls certificate"]["detail"]
    assert "trackside gateway certs" in warned["tls certificate"]["fix"]
    # The broker still serves the certificate it loaded at start.
    (served,) = [name for name in warned if name.startswith("mqtt broker")]
    assert "changed after the gateway started" in warned[served]["detail"]
    assert expired_status == 1
    assert "expired on" in lines(expired, "fail")["tls certificate"]["detail"]


def test_an_unreadable_registry_is_red(gateway: Gateway) -> None:
    registry = gateway.home / "devices.yaml"
    original = registry.read_bytes()
    try:
        registry.write_text("accounts: [{username: device-7, kind: dev")  # a broken hand edit
        status, report = doctor(gateway.config)
    finally:
        registry.write_bytes(original)
    assert status == 1
    failed = lines(report, "fail")
    assert list(failed) == ["device registry"]
    assert "the broker cannot read it" in failed["device registry"]["detail"]


def test_file_access_is_judged_for_the_gateways_user() -> None:
    """Run as root, the doctor judges the files for the user who runs the gateway (here one
    that is neither the file's owner nor in its group)."""
    other = 65534 if os.geteuid() != 65534 else 65533
    # Not pytest's tmp_path: its parent folder is private to this user, as it should be.
    with tempfile.TemporaryDirectory() as shared:
        folder = Path(shared) / "state"
        folder.mkdir()
        Path(shared).chmod(0o755)
        _judged_for(other, folder)


def _judged_for(other: int, folder: Path) -> None:
    registry = folder / "devices.yaml"
    registry.write_text("accounts: []\n")
    registry.chmod(0o600)
    assert may_access(registry, os.geteuid(), os.R_OK)
    assert not may_access(registry, other, os.R_OK)
    registry.chmod(0o644)
    assert may_access(registry, other, os.R_OK)
    folder.chmod(0o700)  # a readable file in a folder the user may not enter
    assert not may_access(registry, other, os.R_OK)
    assert not may_access(folder, other, os.W_OK | os.X_OK)


def test_the_spool_backlog_is_read_as_the_spool_counts_it(tmp_path: Path) -> None:
    """The doctor reads a spool's folder without opening it as a Spool (a running gateway
    writes there); what it counts agrees with the spool's own count."""
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    assert spool_backlog(tmp_path) == Backlog(0, 1, 0)
    spool.append([KafkaRecord("t", b"T7", bytes(100), [("h", b"v")])] * 100)
    assert spool_backlog(tmp_path).bytes == spool.used_bytes > 4096
    spool.commit(spool.read(60)[1])  # Kafka took the first 60
    assert spool_backlog(tmp_path).bytes == spool.used_bytes > 0
    spool.commit(spool.read(1000)[1])
    assert spool_backlog(tmp_path).bytes == spool.used_bytes == 0
    spool.close()


@pytest.fixture
def read_only(gateway: Gateway) -> Iterator[None]:
    """The spool's folder not writable for the gateway's user: a read-only bind mount over it
    when the tests run as root (root writes whatever the mode says), else chmod."""
    folder = gateway.spool
    if os.geteuid() != 0:
        mode = stat.S_IMODE(folder.stat().st_mode)
        folder.chmod(0o555)
        yield
        folder.chmod(mode)
        return
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_spool_folder_not_writable_is_red(gateway: Gateway, read_only: None) -> None:
    status, report = doctor(gateway.config)
    assert status == 1
    failed = lines(report, "fail")
    assert list(failed) == ["spool telemetry"]
    assert "cannot write there" in failed["spool telemetry"]["detail"]


def test_an_invalid_config_names_the_file_and_the_key(gateway: Gateway) -> None:
    raw = yaml.safe_load(gateway.config.read_text())
    raw["connectors"][0]["spool"]["max_bytes"] = 10
    copy = a_copy(gateway, raw)
    status, report = doctor(copy)
    assert status == 1
    (line,) = lines(report, "fail").values()
    assert line["name"] == "config"
    assert str(copy) in line["detail"] and "connectors.0.spool.max_bytes" in line["detail"]


def _post(url: str) -> None:
    request = urllib.request.Request(url, method="POST")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    urllib.request.urlopen(request, timeout=10).close()


def test_a_paused_connector_is_red(gateway: Gateway) -> None:
    _post(f"{gateway.http}/connectors/telemetry/pause")
    try:
        status, report = doctor(gateway.config)
    finally:
        _post(f"{gateway.http}/connectors/telemetry/resume")
    assert status == 1
    failed = lines(report, "fail")
    assert list(failed) == ["connector telemetry"]
    assert failed["connector telemetry"]["detail"].startswith("paused")
    assert "/connectors/telemetry/resume" in failed["connector telemetry"]["fix"]


def test_a_stopped_gateway_is_red(gateway: Gateway) -> None:
    """Last: it stops the module's gateway. Its broker ports and HTTP control answer no more."""
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(30) == 0
    status, report = doctor(gateway.config, "--timeout", "2")
    assert status == 1
    failed = lines(report, "fail")
    assert sum(name.startswith("mqtt broker") for name in failed) == 2
    assert any(name.startswith("http control") for name in failed)
    assert "not listening" in lines(report, "ok")["gateway user"]["detail"]
