"""A device's PUBACK from the embedded broker means its reading is in Kafka or the spool.

The gateway (`trackside gateway run`, embedded broker and connector in one process) is killed
and stopped under load while paho publishes; every reading paho saw acknowledged must reach
Kafka, counted by (device, seq), and each device's readings stay in order.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import pytest

from tests.faults.gateway import gateway_process
from tests.faults.ledger import AckLedger, KafkaTally
from tests.fixtures.kafka import KafkaService
from tests.fixtures.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def check_ledger(ledger: AckLedger, tally: KafkaTally) -> None:
    """Every acknowledged reading reaches Kafka; per-device order holds."""
    acked = set(ledger.acked)
    assert len(acked) > 1000, f"only {len(acked)} readings were acknowledged"
    try:
        wait_until(lambda: tally.has_all(acked), 90, "acknowledged readings in Kafka")
    except AssertionError:
        missing = sorted(acked - tally.seen)
        raise AssertionError(f"{len(missing)} acknowledged readings lost: {missing[:20]}") from None
    late = tally.out_of_order()
    assert not late, f"{len(late)} readings out of order: {late[:10]}"


def test_sigkill_under_load_loses_no_acknowledged_reading(
    tmp_path: Path, kafka: KafkaService
) -> None:
    topic = f"acks-{uuid.uuid4().hex[:8]}.telemetry"
    service = gateway_process(tmp_path, kafka, topic)
    service.start(timeout=60)
    ledger = AckLedger(service.host, service.port, devices=10, rate=500).start()
    tally = KafkaTally(kafka.bootstrap_servers, topic)
    rng = random.Random(7)
    try:
        for delay in (rng.uniform(2, 4), rng.uniform(2, 4), 1.0):  # the last: soon after a start
            time.sleep(delay)
            service.kill()
            service.start(timeout=60)
        wait_until(lambda: len(ledger.acked) > 3000, 60, "readings acknowledged after restarts")
        ledger.stop()
        wait_until(lambda: ledger.unacked() == 0, 60, "paho's resends acknowledged")
        check_ledger(ledger, tally)
    finally:
        ledger.close()
        tally.close()
        service.stop()


def test_sigterm_under_load_drains_and_acknowledges_nothing_it_loses(
    tmp_path: Path, kafka: KafkaService
) -> None:
    topic = f"acks-{uuid.uuid4().hex[:8]}.telemetry"
    service = gateway_process(tmp_path, kafka, topic)
    service.start(timeout=60)
    ledger = AckLedger(service.host, service.port, devices=10, rate=1000).start()
    tally = KafkaTally(kafka.bootstrap_servers, topic)
    try:
        wait_until(lambda: len(ledger.acked) > 2000, 60, "readings acknowledged")
        started = time.monotonic()
        service.stop(timeout=30)
        took = time.monotonic() - started
        assert took < 15, f"the gateway took {took:.1f} s to stop"
        assert "stopping: the connectors take no new readings" in service.tail(200)
        service.start(timeout=60)
        ledger.stop()
        wait_until(lambda: ledger.unacked() == 0, 60, "paho's resends acknowledged")
        check_ledger(ledger, tally)
    finally:
        ledger.close()
        tally.close()
        service.stop()
