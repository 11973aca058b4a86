"""A device's PUBACK from the embedded broker means its reading is in Kafka or the spool.

The gateway (`trackside gateway run`, embedded broker and connector in one process) is killed
and stopped under load while paho publishes; every reading paho saw acknowledged must reach
Kafka, counted by (device, seq), and each device's readings stay in order.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.gateway import gateway_process
from tests.faults.ledger import AckLedger, KafkaTally, assert_acknowledged_in_kafka
from tests.fixtures.kafka import KafkaService
from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@contextlib.contextmanager
def loaded_gateway(
    tmp_path: Path, kafka: KafkaService, rate: float
) -> Iterator[tuple[BrokerHandle, AckLedger, KafkaTally]]:
    """A running gateway, ten paho devices publishing `rate` readings/s through it, and a
    tally of its Kafka topic; at the end every acknowledged reading must be in Kafka, in order.
    """
    topic = f"acks-{uuid.uuid4().hex[:8]}.telemetry"
    service = gateway_process(tmp_path, kafka, topic)
    service.start(timeout=60)
    ledger = AckLedger(service.host, service.port, devices=10, rate=rate).start()
    tally = KafkaTally(kafka.bootstrap_servers, topic)
    try:
        yield service, ledger, tally
        ledger.stop()
        wait_until(lambda: ledger.unacked() == 0, 60, "paho's resends acknowledged")
        assert_acknowledged_in_kafka(ledger, tally)
    finally:
        ledger.close()
        tally.close()
        service.stop()


def test_sigkill_under_load_loses_no_acknowledged_reading(
    tmp_path: Path, kafka: KafkaService
) -> None:
    rng = random.Random(7)
    with loaded_gateway(tmp_path, kafka, rate=500) as (service, ledger, _):
        for delay in (rng.uniform(2, 4), rng.uniform(2, 4), 1.0):  # the last: soon after a start
            time.sleep(delay)
            service.kill()
            service.start(timeout=60)
        wait_until(lambda: len(ledger.acked) > 3000, 60, "readings acknowledged after restarts")


def test_sigterm_under_load_drains_and_acknowledges_nothing_it_loses(
    tmp_path: Path, kafka: KafkaService
) -> None:
    with loaded_gateway(tmp_path, kafka, rate=1000) as (service, ledger, _):
        wait_until(lambda: len(ledger.acked) > 2000, 60, "readings acknowledged")
        started = time.monotonic()
        service.stop(timeout=30)
        took = time.monotonic() - started
        assert took < 15, f"the gateway took {took:.1f} s to stop"
        assert "stopping: the connectors take no new readings" in service.tail(200)
        service.start(timeout=60)
