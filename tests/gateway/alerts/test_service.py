"""The alert service against the real Kafka: exactly-once alerts across SIGKILL, the policy."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer

from gateway.alerts.config import KafkaSettings, ServiceConfig
from gateway.alerts.rules import RuleSet
from gateway.alerts.service import AlertService
from gateway.topics import Topics
from tests.fixtures.kafka import KafkaService, LocalKafkaHandle
from tests.fixtures.processes import active_logs
from tests.fixtures.waiting import wait_until
from tests.gateway.alerts.conftest import Event, TopicReader

# The fault suite's cluster tests take these from here.
__all__ = ["HOT_RULES", "PATTERN", "TopicReader"]

pytestmark = pytest.mark.integration

HOT_RULES = """
rules:
  - {name: hot, kind: threshold, channels: [bearing_left_temp], above: 120, clear: 100}
policy: {flag_severities: []}
"""


def _reading(train: str, seq: int, value: float, device_id: int = 7) -> bytes:
    return json.dumps(
        {
            "train_id": train,
            "device_id": device_id,
            "boot_id": 1,
            "seq": seq,
            "ts_ms": 1_767_225_600_000 + seq * 1000,
            "wall_clock": True,
            "values": {"bearing_left_temp": value},
        }
    ).encode()


def _service(
    kafka: KafkaService, prefix: str, rules: Path, log: Path
) -> subprocess.Popen[bytes]:
    active_logs[f"alerts:{prefix}"] = log
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "alerts",
                "run",
                "--bootstrap-servers",
                kafka.bootstrap_servers,
                "--topic-prefix",
                prefix,
                "--rules",
                str(rules),
                "--group-id",
                f"{prefix}-alerts",
                "--transactional-id",
                f"{prefix}-alerts-0",
                "-v",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


TRAINS = [f"T{i}" for i in range(40)]
CYCLES = 8  # per train: 50, 130, 130, 50 -> one firing and one resolved event per cycle
PATTERN = [50.0, 130.0, 130.0, 50.0]


def test_sigkill_mid_burst_writes_each_alert_exactly_once_and_restores_states(
    kafka: KafkaService,
    unique_topic: str,
    tmp_path: Path,
    readers: Callable[[str], TopicReader],
) -> None:
    topics = Topics.with_prefix(unique_topic)
    rules = tmp_path / "rules.yaml"
    rules.write_text(HOT_RULES)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 5})
    alerts = readers(topics.alerts)

    def send(train: str, seq: int, value: float) -> None:
        producer.produce(topics.telemetry, _reading(train, seq, value), train.encode())

    # "Tlong" fires now and resolves only after the restart: its state must survive the kill.
    send("Tlong", 0, 130.0)
    assert producer.flush(30) == 0
    service = _service(kafka, unique_topic, rules, tmp_path / "alerts-1.log")
    alerts.wait(lambda r: len(r) == 1)

    burst_done, killed = threading.Event(), threading.Event()

    def burst() -> None:
        readings = [v for _ in range(CYCLES) for v in PATTERN]
        for seq, value in enumerate(readings, start=1):
            if seq == len(readings) // 2:
                killed.wait(120)  # on a slow machine: keep the second half for after the kill
            for train in TRAINS:
                send(train, seq, value)
                if seq % 5 == 0:
                    send(train, seq - 2, readings[seq - 3])  # a redelivered older reading
            send("Tlong", seq, 125.0)  # between clear and threshold: keeps firing
            producer.poll(0)
            time.sleep(0.12)
        assert producer.flush(30) == 0
        burst_done.set()

    sender = threading.Thread(target=burst, daemon=True)
    sender.start()
    expected_total = len(TRAINS) * CYCLES * 2 + 2
    seen = alerts.wait(lambda r: len(r) >= expected_total // 4)
    os.kill(service.pid, signal.SIGKILL)
    service.wait()
    killed.set()
    assert len(seen) < expected_total // 2

    service = _service(kafka, unique_topic, rules, tmp_path / "alerts-2.log")
    try:
        sender.join(120)
        assert burst_done.is_set()
        send("Tlong", 10_000, 20.0)  # resolves; the service sees it after the whole burst
        assert producer.flush(30) == 0
        events = alerts.wait(
            lambda r: any(e["train_id"] == "Tlong" and e["state"] == "resolved" for e in r),
            timeout=120,
        )
    finally:
        service.send_signal(signal.SIGTERM)
        assert service.wait(60) == 0

    keys = Counter((e["train_id"], e["state"], e["ts_ms"]) for e in events)
    expected = Counter(
        (train, state, 1_767_225_600_000 + seq * 1000)
        for train in TRAINS
        for cycle in range(CYCLES)
        for state, seq in (("firing", cycle * 4 + 2), ("resolved", cycle * 4 + 4))
    )
    expected[("Tlong", "firing", 1_767_225_600_000)] = 1
    expected[("Tlong", "resolved", 1_767_225_600_000 + 10_000_000)] = 1
    extra, missing = keys - expected, expected - keys
    assert (extra, missing) == (Counter(), Counter())  # each alert once: no extra, none missing


def test_policy_disables_a_flagged_train_and_a_clear_enables_it(
    kafka: KafkaService, unique_topic: str, readers: Callable[[str], TopicReader]
) -> None:
    topics = Topics.with_prefix(unique_topic)
    rules = RuleSet.model_validate(
        {
            "rules": [
                {
                    "name": "bearing_hot",
                    "kind": "threshold",
                    "channels": ["bearing_left_temp"],
                    "above": 120,
                    "severity": "critical",
                },
                {"name": "stale", "kind": "stale", "after_s": 3600},
            ],
            "policy": {"disable_train": True},
        }
    )
    config = ServiceConfig(
        kafka=KafkaSettings(
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=f"{unique_topic}-alerts",
            transactional_id=f"{unique_topic}-alerts-0",
        ),
        topics=topics,
    )
    service = AlertService(config, rules)
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop,), daemon=True)
    runner.start()
    alerts, flags, commands = (
        readers(topics.alerts),
        readers(topics.maintenance),
        readers(topics.commands),
    )
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})

    def send(topic: str, key: str, value: Event | bytes) -> None:
        payload = value if isinstance(value, bytes) else json.dumps(value).encode()
        producer.produce(topic, payload, key.encode())
        assert producer.flush(30) == 0

    try:
        assert service.ready.wait(60)
        send(topics.telemetry, "T9", _reading("T9", 1, 131.2))
        (firing,) = alerts.wait(lambda r: len(r) == 1)
        assert firing["key"] == "T9/bearing_hot/7/bearing_left_temp"
        assert (firing["state"], firing["severity"], firing["value"]) == (
            "firing",
            "critical",
            131.2,
        )
        (flag,) = flags.wait(lambda r: len(r) == 1)
        assert flag == {
            "train_id": "T9",
            "flagged": True,
            "reason": firing["key"],
            "since_ms": firing["ts_ms"],
            "by": "alerts",
            "disabled": True,
        }
        (disable,) = commands.wait(lambda r: len(r) == 1)
        assert (disable["train_id"], disable["device_id"], disable["op"]) == ("T9", None, "disable")

        send(
            topics.operator_actions,
            firing["key"],
            {"action": "ack", "key": firing["key"], "by": "maria", "at_ms": 5},
        )
        send(topics.operator_actions, "T9", {"action": "clear", "train_id": "T9", "by": "maria",
                                              "at_ms": 6})
        # The ack and the clear may be committed in one transaction: both events at once.
        acked = alerts.wait(lambda r: len(r) >= 2)[1]
        assert (acked["state"], acked["acked_by"], acked["acked_at_ms"]) == (
            "acknowledged",
            "maria",
            5,
        )
        cleared = flags.wait(lambda r: len(r) >= 2)[1]
        assert (cleared["flagged"], cleared["by"], cleared["disabled"]) == (False, "maria", False)
        enable = commands.wait(lambda r: len(r) >= 2)[1]
        assert (enable["train_id"], enable["op"]) == ("T9", "enable")
        resolved = alerts.wait(lambda r: len(r) >= 3)[2]  # the clear ends the train's alerts
        assert (resolved["key"], resolved["state"], resolved["cleared_by"]) == (
            firing["key"],
            "resolved",
            "maria",
        )

        send(topics.device_status, "T9/7", {"state": "offline"})  # the last will
        send(topics.telemetry, "T9", b"garbage is skipped, not fatal")
        stale = alerts.wait(lambda r: len(r) == 4)[3]
        assert (stale["key"], stale["state"]) == ("T9/stale/7/readings", "firing")
        assert runner.is_alive()
    finally:
        stop.set()
        runner.join(60)
    assert service.counters.rejected == 1


def _state(train: str, state: str, value: float) -> bytes:
    return json.dumps(
        {
            "train_id": train,
            "rule": "hot",
            "device_id": 7,
            "sensor": "bearing_left_temp",
            "state": state,
            "since_ms": 1_767_225_600_000,
            "value": value,
            "ts_ms": 1_767_225_600_000,
            "ref_ts_ms": None,
            "ref_value": None,
            "acked_by": None,
            "acked_at_ms": None,
        }
    ).encode()


def test_a_malformed_state_record_is_skipped_and_restore_goes_on(
    kafka: KafkaService,
    unique_topic: str,
    readers: Callable[[str], TopicReader],
    caplog: pytest.LogCaptureFixture,
) -> None:
    topics = Topics.with_prefix(unique_topic)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    seen_wrong_type = json.dumps(
        {"train_id": "T3", "device_id": 7, "boot_id": "x", "seq": 1, "arrival_ms": 5}
    ).encode()
    malformed = [
        ("T1/hot/7/bearing_left_temp", b"{not json"),
        ("T2/hot/7/bearing_left_temp", b'{"train_id": "T2"}'),  # fields missing
        ("T3/_seen/7", seen_wrong_type),
        ("no-slashes", _state("T4", "firing", 130.0)),
    ]
    for key, value in malformed:
        producer.produce(topics.alert_state, value, key.encode())
    t5_key = b"T5/hot/7/bearing_left_temp"
    producer.produce(topics.alert_state, _state("T5", "firing", 131.0), t5_key)
    producer.produce(topics.maintenance, b"[]", b"T6")
    assert producer.flush(30) == 0

    rules = RuleSet.model_validate(
        {
            "rules": [{"name": "hot", "kind": "threshold", "channels": ["bearing_left_temp"],
                       "above": 120, "clear": 100}],
            "policy": {"flag_severities": []},
        }
    )  # fmt: skip
    config = ServiceConfig(
        kafka=KafkaSettings(
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=f"{unique_topic}-alerts",
            transactional_id=f"{unique_topic}-alerts-0",
        ),
        topics=topics,
    )
    service = AlertService(config, rules)
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop,), daemon=True)
    alerts = readers(topics.alerts)
    with caplog.at_level(logging.WARNING, logger="gateway.alerts"):
        runner.start()
        try:
            assert service.ready.wait(60)
            # T5's firing state was restored behind the malformed records: a cool reading
            # resolves it (a fresh state would stay inactive and write nothing).
            producer.produce(topics.telemetry, _reading("T5", 1, 50.0), b"T5")
            assert producer.flush(30) == 0
            (resolved,) = alerts.wait(lambda r: len(r) == 1)
            assert (resolved["train_id"], resolved["state"]) == ("T5", "resolved")
        finally:
            stop.set()
            runner.join(60)
    assert service.counters.state_skipped == len(malformed) + 1  # + the maintenance record
    skipped = [r.getMessage() for r in caplog.records if "malformed state record" in r.getMessage()]
    assert len(skipped) == len(malformed) + 1
    assert all("\n" not in line for line in skipped)  # one line each


def _lines(log: Path, text: str) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if text in line]


def _send_through_a_kafka_crash(
    broker: LocalKafkaHandle, producer: Producer, topic: str, readings: list[float]
) -> None:
    """Send T2's readings; Kafka is SIGKILLed after a third of them and started again 8 s
    later. Readings sent meanwhile wait in the producer, as they would in the bridge."""
    for seq, value in enumerate(readings, start=1):
        producer.produce(topic, _reading("T2", seq, value), b"T2")
        producer.poll(0)
        if seq == len(readings) // 3:
            broker.kill()
            killed = time.monotonic()
        time.sleep(0.1)  # the pace of the simulated device, not a wait for a result
    wait_until(lambda: time.monotonic() - killed >= 8, 30, "8 s of Kafka away")
    broker.start()
    assert producer.flush(60) == 0


# Kafka away when the service starts, for this long: past its first asks for the topics
# (each waits up to 5 s, 0.5 s doubling between them), so several failed asks show as the one
# line. Longer proves nothing more (it was 20 s).
OUTAGE_S = 10


def test_waits_for_kafka_then_catches_up_exactly_once_and_survives_a_kafka_crash(
    kafka_factory: Callable[..., LocalKafkaHandle], unique_topic: str, tmp_path: Path
) -> None:
    broker = kafka_factory(start=False)
    topics = Topics.with_prefix(unique_topic)
    rules = tmp_path / "rules.yaml"
    rules.write_text(HOT_RULES)
    log = tmp_path / "alerts.log"
    service = _service(KafkaService(broker.bootstrap_servers), unique_topic, rules, log)
    producer = Producer(
        {"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 5, "log_level": 0}
    )
    alerts: TopicReader | None = None
    try:
        # Kafka is away for OUTAGE_S after the service started: it waits, and says so once.
        started = time.monotonic()
        wait_until(lambda: _lines(log, "Kafka unreachable"), 30, "the outage logged")
        wait_until(lambda: time.monotonic() - started >= OUTAGE_S, 30, f"{OUTAGE_S} s of outage")
        assert service.poll() is None
        outage_lines = log.read_text(errors="replace").splitlines()
        broker.start()
        back = time.monotonic()
        wait_until(lambda: _lines(log, "alert service running"), 60, "the service running")
        running_after = time.monotonic() - back
        alerts = TopicReader(broker.bootstrap_servers, topics.alerts)
        for seq, value in enumerate([130.0, 50.0], start=1):
            producer.produce(topics.telemetry, _reading("T1", seq, value), b"T1")
        assert producer.flush(30) == 0
        alerts.wait(lambda r: len(r) == 2)
        caught_up_after = time.monotonic() - back

        crash_readings = [v for _ in range(6) for v in PATTERN]
        _send_through_a_kafka_crash(broker, producer, topics.telemetry, crash_readings)
        back = time.monotonic()
        events = alerts.wait(lambda r: len(r) == 2 + 12, timeout=180)
        crash_caught_up_after = time.monotonic() - back
    finally:
        service.send_signal(signal.SIGTERM)
        exit_code = service.wait(60)
        if alerts is not None:
            alerts.close()
    assert exit_code == 0

    # Exactly once: each expected event once and nothing else (read_committed).
    keys = Counter((e["train_id"], e["state"], e["ts_ms"]) for e in events)
    expected = Counter(
        ("T2", state, 1_767_225_600_000 + seq * 1000)
        for cycle in range(6)
        for state, seq in (("firing", cycle * 4 + 2), ("resolved", cycle * 4 + 4))
    )
    expected[("T1", "firing", 1_767_225_600_000 + 1000)] = 1
    expected[("T1", "resolved", 1_767_225_600_000 + 2000)] = 1
    assert (keys - expected, expected - keys) == (Counter(), Counter())

    # The outage: one line instead of librdkafka's hundreds, nothing of librdkafka's own.
    outage_log = "\n".join(outage_lines)
    assert outage_log.count("Kafka unreachable") == 1
    assert "|FAIL|" not in outage_log
    assert not _lines(log, "|FAIL|")
    assert _lines(log, "Kafka reachable again")
    print(
        f"\nlog lines during the {OUTAGE_S} s outage: {len(outage_lines)}; after Kafka was back: "
        f"service running in {running_after:.1f} s, first alerts readable in "
        f"{caught_up_after:.1f} s; after the crash: alerts readable in "
        f"{crash_caught_up_after:.1f} s; whole log: {len(log.read_text().splitlines())} lines"
    )
