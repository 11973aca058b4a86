"""`trackside doctor`: every check an operator (or support) needs on one gateway, one line each.

Checks, in order: the gateway file is valid; who runs the gateway (file access is judged for
that user); the gateway file's mode; each Kafka cluster answers, and each topic the gateway
uses is there with its partitions, replication and cleanup policy; the MQTT listeners answer
(and serve the certificate on disk); the TLS key and certificate (days to expiry); the device
registry; each spool (writable, free disk, backlog); the clock's offset from Kafka's; each
connector and worker as the HTTP control reports it; versions. `docs/operations.md` lists
what each red line means and what to do.
"""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass
from pathlib import Path

import confluent_kafka

from bridge import BridgeError
from bridge.pipeline import Pipeline
from gateway import GatewayError
from gateway.config import GatewayConfig, load_gateway_config
from gateway.doctor import files, kafka, running
from gateway.doctor.result import CheckResult, Status, fail, ok

__all__ = ["CheckResult", "Report", "Status", "run_doctor"]


@dataclass(frozen=True)
class Report:
    """Every line of one run; `ok` is false when any line is red."""

    config: Path
    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        """No red line."""
        return all(r.status != "fail" for r in self.results)

    def count(self, status: Status) -> int:
        """How many lines have `status`."""
        return sum(r.status == status for r in self.results)

    def as_json(self) -> dict[str, object]:
        """The report as `--json` prints it (the schema is in docs/operations.md)."""
        return {
            "config": str(self.config),
            "ok": self.ok,
            "counts": {s: self.count(s) for s in ("ok", "warn", "fail")},
            "checks": [r.as_json() for r in self.results],
        }


def _load(path: Path) -> tuple[GatewayConfig | None, CheckResult]:
    try:
        config = load_gateway_config(path)
        for connector in config.connectors:
            Pipeline(connector)
    except (BridgeError, GatewayError) as exc:
        fix = "correct the file or key named; `trackside gateway check -c FILE` checks it alone"
        return None, fail("config", "config", str(exc), fix)
    parts = [f"{len(config.connectors)} connector(s)"]
    parts += [name for name in ("alerts", "dashboard") if getattr(config, name) is not None]
    return config, ok("config", "config", f"{path}: valid ({', '.join(parts)})")


def _versions() -> CheckResult:
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    detail = (
        f"trackside {version('trackside')}, Python {platform.python_version()}, "
        f"confluent-kafka {version('confluent-kafka')} (librdkafka "
        f"{confluent_kafka.libversion()[0]}), amqtt {version('amqtt')}, "
        f"{platform.system()} {platform.release()} {platform.machine()}"
    )
    return ok("version", "versions", detail)


def run_doctor(path: Path, timeout: float = 5.0) -> Report:
    """Run every check against the gateway file `path`; network waits are `timeout` s each."""
    config, loaded = _load(path)
    if config is None:
        return Report(path, (loaded, _versions()))
    uid, user = running.gateway_user(config)
    results = [loaded, user, *files.check_config_file(path, uid)]
    reached = []
    for cluster in kafka.clusters(config):
        line, admin = kafka.connect(cluster, timeout)
        results.append(line)
        if admin is not None:
            results += kafka.check_topics(cluster, admin, timeout)
            reached.append((cluster, admin))
    results += running.check_listeners(config, timeout)
    results += files.check_certificate(config, uid)
    results += files.check_registry(config, uid)
    results += files.check_spools(config, uid)
    results += [kafka.check_clock(cluster, admin, timeout) for cluster, admin in reached]
    results += running.check_connectors(config, timeout)
    results.append(_versions())
    return Report(path, tuple(results))
