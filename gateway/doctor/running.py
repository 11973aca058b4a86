"""`trackside doctor`'s checks of the running gateway: who runs it, whether its MQTT listeners
listen (and still serve the certificate on disk), and each connector's and worker's state as
its HTTP control reports it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from gateway.doctor.files import user_name
from gateway.doctor.result import CheckResult, fail, ok, warn

__all__ = ["Socket", "check_connectors", "check_listeners", "gateway_user", "listening"]

_LOCAL = ("", "0.0.0.0", "::", "127.0.0.1", "::1", "localhost")  # in this machine's table
_START_SLACK_S = 2.0
_RESTART = "restart it: `sudo systemctl restart trackside` (or `trackside gateway run -c FILE`)"


@dataclass(frozen=True)
class Socket:
    """A listening TCP socket: its owner and its inode (which names it in /proc/PID/fd)."""

    uid: int
    inode: int


def listening() -> dict[int, Socket] | None:
    """Port -> the socket listening on it, for every TCP port on this machine, from Linux's
    /proc/net/tcp and tcp6 (any user may read them); None where there are none."""
    found: dict[int, Socket] = {}
    tables = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        tables += 1
        for row in rows:
            # local address (hex ip:port), state (0A: LISTEN), ..., uid, timeout, inode
            fields = row.split()
            if fields[3] == "0A":
                port = int(fields[1].rsplit(":", 1)[1], 16)
                found.setdefault(port, Socket(int(fields[7]), int(fields[9])))
    return found if tables else None


def gateway_user(config: GatewayConfig) -> tuple[int, CheckResult]:
    """The uid whose access the file checks judge: the owner of the gateway's HTTP control
    or broker socket, else (the gateway is not running) the user running the doctor."""
    ports = [config.http.port] if config.http.port else []
    broker = config.broker
    if broker.enabled:
        ports.append(broker.port if broker.plain or broker.tls is None else broker.tls.port)
    sockets = listening() or {}
    for port in ports:
        if port in sockets:
            uid = sockets[port].uid
            detail = f"files checked as {user_name(uid)}, who listens on port {port}"
            return uid, ok("user", "gateway user", detail)
    uid = os.geteuid()
    detail = f"the gateway is not listening: files checked as {user_name(uid)} (this user)"
    return uid, ok("user", "gateway user", detail)


def check_listeners(config: GatewayConfig, timeout: float) -> list[CheckResult]:
    """The MQTT broker the connectors read from listens: the embedded broker's plain and TLS
    ports (the TLS certificate not replaced since the start), or Mosquitto's address.

    A port on this machine is looked up in the kernel's table of listening sockets rather
    than connected to: amqtt logs an ERROR and a WARNING for every connection that sends no
    CONNECT, and a CONNECT without a password would log a refused login, each run."""
    broker = config.broker
    if not broker.enabled:
        addresses = dict.fromkeys((c.mqtt.host, c.mqtt.port) for c in config.connectors)
        return [_listens(host, port, timeout, "mosquitto") for host, port in addresses]
    results = []
    if broker.plain:
        results.append(_listens(broker.host, broker.port, timeout, "embedded"))
    if broker.tls is not None:
        line = _listens(broker.host, broker.tls.port, timeout, "embedded, tls")
        results.append(_replaced(line, broker.tls.port, broker.tls.cert_file))
    return results


def _listens(host: str, port: int, timeout: float, kind: str) -> CheckResult:
    name = f"mqtt broker {host}:{port}"
    table = listening() if host in _LOCAL else None
    if table is not None:
        problem = None if port in table else "nothing listens on this port"
    else:  # another machine's broker (Mosquitto elsewhere): connect (it logs the connection)
        try:
            socket.create_connection((host, port), timeout).close()
            problem = None
        except OSError as exc:
            problem = f"no connection: {exc.strerror or exc}"
    if problem is None:
        return ok("broker", name, f"listening ({kind})")
    fix = (
        "start Mosquitto (`sudo systemctl start mosquitto`) or correct the connectors' "
        "mqtt.host and mqtt.port"
        if kind == "mosquitto"
        else _RESTART
    )
    return fail("broker", name, f"{problem}; devices cannot publish", fix)


def _started_at(port: int) -> float | None:
    """When the process listening on `port` started (epoch seconds); None when this user may
    not see which process that is (another user's, unless root)."""
    sockets = listening() or {}
    if port not in sockets:
        return None
    link = f"socket:[{sockets[port].inode}]"
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == link for fd in fd_dir.iterdir()):
                return _process_start(fd_dir.parent)
    return None


def _process_start(proc: Path) -> float | None:
    """A process's start in epoch seconds: its `starttime` (clock ticks after boot, the 22nd
    field of /proc/PID/stat) plus the boot time (`btime` in /proc/stat)."""
    try:
        ticks = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _replaced(line: CheckResult, port: int, cert_file: Path) -> CheckResult:
    """A listening TLS port turns yellow when its certificate file is newer than the
    process: the broker still serves the one it loaded at start."""
    if line.status != "ok":
        return line
    started = _started_at(port)
    try:
        changed = cert_file.stat().st_mtime
    except OSError:
        return line  # the certificate line says what is wrong with the file
    # The boot time in /proc/stat is in whole seconds: a file written just before the start
    # could look newer by up to one.
    if started is None or changed <= started + _START_SLACK_S:
        return line
    return warn(
        "broker",
        line.name,
        f"listening (embedded, tls), but {cert_file} changed after the gateway started: it "
        "still serves the certificate it loaded then",
        f"{_RESTART}, so it serves the new one",
    )


def _status(config: GatewayConfig, timeout: float) -> dict[str, Any]:
    host = "127.0.0.1" if config.http.host in ("", "0.0.0.0", "::") else config.http.host
    url = f"http://{host}:{config.http.port}/status"
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
