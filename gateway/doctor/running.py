"""`trackside doctor`'s checks of the running gateway: who runs it, whether its MQTT listeners
answer (and serve the certificate on disk), and each connector's and worker's state as its
HTTP control reports it."""

from __future__ import annotations

import json
import os
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.config import GatewayConfig
from gateway.doctor.files import user_name
from gateway.doctor.result import CheckResult, fail, ok, warn

__all__ = ["check_connectors", "check_listeners", "gateway_user", "listener_uid"]

_ANY = ("", "0.0.0.0", "::")  # listening on every address: reach it on the loopback
_RESTART = "restart it: `sudo systemctl restart trackside` (or `trackside gateway run -c FILE`)"


def _reach(host: str) -> str:
    return "127.0.0.1" if host in _ANY else host


def listener_uid(port: int) -> int | None:
    """The user owning the socket that listens on TCP `port` on this machine (Linux's
    /proc/net/tcp and tcp6, which any user may read), or None."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local address (hex ip:port), state (0A: LISTEN), uid
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return int(fields[7])
    return None


def gateway_user(config: GatewayConfig) -> tuple[int, CheckResult]:
    """The uid whose access the file checks judge: the owner of the gateway's HTTP control
    or broker socket, else (the gateway is not running) the user running the doctor."""
    ports = [config.http.port] if config.http.port else []
    broker = config.broker
    if broker.enabled:
        ports.append(broker.port if broker.plain or broker.tls is None else broker.tls.port)
    for port in ports:
        uid = listener_uid(port)
        if uid is not None:
            detail = f"files checked as {user_name(uid)}, who listens on port {port}"
            return uid, ok("user", "gateway user", detail)
    uid = os.geteuid()
    detail = f"the gateway is not listening: files checked as {user_name(uid)} (this user)"
    return uid, ok("user", "gateway user", detail)


def _served_certificate(host: str, port: int, timeout: float) -> bytes:
    context = ssl.create_default_context()
    # Only to read what it serves: whether devices trust it is the certificate check's job.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout) as raw,
        context.wrap_socket(raw) as tls,
    ):
        served = tls.getpeercert(binary_form=True)
    if served is None:
        raise ssl.SSLError("no certificate served")
    return served


def check_listeners(config: GatewayConfig, timeout: float) -> list[CheckResult]:
    """The MQTT broker the connectors read from accepts connections: the embedded broker's
    plain and TLS listeners (serving the certificate on disk), or Mosquitto's address."""
    broker = config.broker
    if not broker.enabled:
        addresses = dict.fromkeys((c.mqtt.host, c.mqtt.port) for c in config.connectors)
        return [_tcp(host, port, timeout, "mosquitto") for host, port in addresses]
    results = []
    if broker.plain:
        results.append(_tcp(broker.host, broker.port, timeout, "embedded"))
    if broker.tls is not None:
        results.append(_tls(broker.host, broker.tls.port, broker.tls.cert_file, timeout))
    return results


def _tcp(host: str, port: int, timeout: float, kind: str) -> CheckResult:
    name = f"mqtt broker {host}:{port}"
    try:
        socket.create_connection((_reach(host), port), timeout).close()
    except OSError as exc:
        fix = (
            _RESTART
            if kind == "embedded"
            else "start Mosquitto (`sudo systemctl start mosquitto`) or correct the "
            "connectors' mqtt.host and mqtt.port"
        )
        return fail(
            "broker", name, f"not listening ({exc.strerror or exc}); devices cannot publish", fix
        )
    return ok("broker", name, f"listening ({kind})")


def _tls(host: str, port: int, cert_file: Path, timeout: float) -> CheckResult:
    name = f"mqtt broker {host}:{port} (tls)"
    try:
        served = _served_certificate(_reach(host), port, timeout)
    except (OSError, ssl.SSLError) as exc:
        return fail("broker", name, f"no TLS handshake: {exc}", _RESTART)
    try:
        on_disk = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError):
        return ok("broker", name, "listening (tls); the certificate on disk is checked below")
    if on_disk.public_bytes(serialization.Encoding.DER) != served:
        served_until = x509.load_der_x509_certificate(served).not_valid_after_utc
        return warn(
            "broker",
            name,
            f"serves another certificate than {cert_file} (valid "
            f"until {served_until:%Y-%m-%d}): it was replaced after the start",
            f"{_RESTART}, so it serves the new one",
        )
    return ok("broker", name, f"listening (tls), serving {cert_file}")


def _status(config: GatewayConfig, timeout: float) -> dict[str, Any]:
    url = f"http://{_reach(config.http.host)}:{config.http.port}/status"
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        body: dict[str, Any] = json.loads(answer.read())
    return body


def check_connectors(config: GatewayConfig, timeout: float) -> list[CheckResult]:
    """Each configured connector and supervised worker, as the HTTP control's /status has it."""
    http = config.http
    if not http.port:
        return [
            warn(
                "connector",
                "http control",
                "http.port is 0: connector states cannot be read",
                "set http.port (default 8081) and restart the gateway",
            )
        ]
    name = f"http control {http.host}:{http.port}"
    try:
        status = _status(config, timeout)
    except (OSError, ValueError) as exc:
        return [fail("connector", name, f"no answer ({exc}): is the gateway running?", _RESTART)]
    shown = {c["name"]: c for c in status.get("connectors", [])}
    results = [ok("connector", name, f"answers: {len(shown)} connector(s)")]
    for connector in config.connectors:
        results.append(_connector(connector.name, shown.get(connector.name), http.port))
    for worker, state in status.get("workers", {}).items():
        results.append(_worker(worker, state))
    return results


def _connector(name: str, shown: dict[str, Any] | None, port: int) -> CheckResult:
    label = f"connector {name}"
    if shown is None:
        return fail(
            "connector",
            label,
            "configured but not running: the gateway was started with another file",
            _RESTART,
        )
    state, mode, kafka = shown["state"], shown["mode"], shown["kafka"]
    detail = f"{state}, {mode}, Kafka {kafka}, {shown.get('received', 0)} reading(s) taken"
    if state == "failed":
        return fail(
            "connector",
            label,
            f"failed: {shown.get('reason')}",
            f"read the gateway's log for the cause, then {_RESTART}",
        )
    if state == "paused":
        return fail(
            "connector",
            label,
            f"{detail}: devices' readings wait unacknowledged",
            f"resume it: `curl -X POST -H 'Authorization: Bearer TOKEN' "
            f"http://127.0.0.1:{port}/connectors/{name}/resume`",
        )
    if state != "running":
        return fail("connector", label, detail, _RESTART)
    if shown.get("problem"):
        return fail(
            "connector",
            label,
            f"{detail}: {shown['problem']}",
            "see docs/operations.md (the spool's disk) and the gateway's log",
        )
    if mode == "spooling" or kafka != "reachable":
        return warn(
            "connector",
            label,
            f"{detail}: readings go to the spool",
            "see the kafka and topic lines; the spool replays once Kafka answers",
        )
    return ok("connector", label, detail)


def _worker(name: str, state: dict[str, Any]) -> CheckResult:
    label = f"worker {name}"
    detail = f"{state['state']}, {state['restarts']} restart(s)"
    if state["state"] == "running":
        return ok("connector", label, detail)
    return fail(
        "connector",
        label,
        f"{detail}; last failure: {state.get('failure')}",
        "read the gateway's log for the cause (it restarts with backoff by itself)",
    )
