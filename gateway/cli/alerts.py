"""`trackside alerts run|check`: the alert service and its rule files."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import typer

from gateway.alerts.config import KafkaSettings, ServiceConfig, load_service_config
from gateway.alerts.rules import StaleRule, load_rules
from gateway.alerts.service import AlertService
from gateway.cli.console import console, log_for_service
from gateway.supervise import Supervisor
from gateway.topics import Topics

__all__ = ["app"]

app = typer.Typer(
    help="The alert service: rules over telemetry, exactly-once alerts and maintenance flags.",
    no_args_is_help=True,
)


@app.command()
def check(rules: Path = typer.Argument(..., help="Rule file (YAML).")) -> None:
    """Validate a rule file: kinds, channel names, levels, durations."""
    rule_set = load_rules(rules)
    console.print(f"[green]{rules}: {len(rule_set.rules)} rules are valid[/]")
    for rule in rule_set.rules:
        level = f"after {rule.after_s:g} s" if isinstance(rule, StaleRule) else rule.threshold
        console.print(f"  {rule.name:<24} {rule.kind:<9} {rule.severity:<8} {level}")


# An option left out takes the service file's value, or else the default shown.
_DEFAULTS = KafkaSettings()


@app.command()
def run(
    config: Path | None = typer.Option(
        None, "--config", "-c", metavar="FILE", help="Service file (YAML); left out: defaults."
    ),
    rules: Path | None = typer.Option(
        None, metavar="FILE", help="Rule file.", show_default="the built-in rules"
    ),
    bootstrap_servers: str | None = typer.Option(
        None,
        metavar="HOST:PORT,...",
        help="Kafka bootstrap servers.",
        show_default=_DEFAULTS.bootstrap_servers,
    ),
    topic_prefix: str | None = typer.Option(
        None,
        metavar="PREFIX",
        help="Use PREFIX.telemetry, PREFIX.alerts, ... instead of trackside.*",
        show_default="trackside",
    ),
    group_id: str | None = typer.Option(
        None, help="Kafka consumer group.", show_default=_DEFAULTS.group_id
    ),
    transactional_id: str | None = typer.Option(
        None,
        help="Kafka transactional id: stable per instance, different for each instance.",
        show_default=_DEFAULTS.transactional_id,
    ),
    partitions: int | None = typer.Option(
        None,
        metavar="N",
        help="Partitions of the topics it creates (one per instance at least; docs/scaling.md).",
        show_default=str(_DEFAULTS.partitions),
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what the service does."),
) -> None:
    """Run the alert service until SIGTERM or Ctrl-C."""
    log_for_service(verbose)
    service_config = load_service_config(config) if config else ServiceConfig()
    kafka: dict[str, Any] = {}
    if bootstrap_servers:
        kafka["bootstrap_servers"] = bootstrap_servers
    if group_id:
        kafka["group_id"] = group_id
    if transactional_id:
        kafka["transactional_id"] = transactional_id
    if partitions:
        kafka["partitions"] = partitions
    update: dict[str, Any] = {"kafka": service_config.kafka.model_copy(update=kafka)}
    if topic_prefix:
        update["topics"] = Topics.with_prefix(topic_prefix)
    if rules:
        update["rules_file"] = rules
    service_config = service_config.model_copy(update=update)
    service = AlertService(service_config, load_rules(service_config.rules_file))
    # The same supervision as in `trackside gateway run`: waits out an unreachable Kafka, and
    # a failed service is started again (new producer, restore, replay) after a backoff.
    supervisor = Supervisor("alert service", service.run)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: supervisor.stop())
    console.print(
        f"alert service on {service_config.kafka.bootstrap_servers}, "
        f"rules {service_config.rules_file} (Ctrl-C stops it)"
    )
    supervisor.run()
    counters = service.counters
    console.print(
        f"alert service stopped: {counters.readings} readings, {counters.alerts} alerts, "
        f"{counters.duplicates} duplicates, {counters.rejected} rejected, "
        f"{counters.transactions} transactions, {supervisor.restarts} restarts"
    )
