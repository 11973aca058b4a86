"""Kafka away: down when the gateway starts, killed mid-stream, or down while the bridge itself
is killed. Every reading paho saw acknowledged reaches Kafka once it is back, in order per
device; the gateway never exits; its status says where the readings go.

Readings are counted by (device, seq) from paho and Kafka, never by the bridge's counters.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.ledger import AckLedger, KafkaTally
from tests.faults.services import Bridge, Gateway, Names, assert_none_lost, librdkafka_lines
from tests.fixtures.kafka import LocalKafkaHandle
from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RATE = 200  # readings per second from paho, in total
# Kafka away at start for this long: past the spool switch, three times the connectors'
# delivery timeout (5 s, services._connector) and librdkafka's reconnect backoff at its 10 s
# cap, so the librdkafka lines counted are those of an outage in its steady state. Longer
# proves nothing more (it was 40 s; the flood of finding 3 was 1,400 lines in 30 s).
OUTAGE_S = 15


def test_kafka_down_at_start_takes_nothing_down(
    tmp_path: Path, kafka_later: LocalKafkaHandle
) -> None:
    """Finding 3: Kafka down at start took the whole gateway down (and logged 1,400
    librdkafka lines in 30 s). Now the readings go to the spool, acknowledged, for as long
    as Kafka is away (OUTAGE_S here), and all reach Kafka once it starts."""
    names = Names()
    gateway = Gateway(tmp_path, names, kafka_later.bootstrap_servers)
    gateway.start(timeout=60)
    ledger = AckLedger(gateway.mqtt_host, gateway.mqtt_port, devices=10, rate=RATE).start()
    tally: KafkaTally | None = None
    try:

        def spooling() -> bool:
            connector = gateway.get("/status")[1]["connectors"][0]
            return bool(connector["kafka"] == "unreachable" and connector["mode"] == "spooling")

        wait_until(spooling, 30, '/status saying "kafka": "unreachable", mode spooling')
        wait_until(lambda: len(ledger.acked) >= OUTAGE_S * RATE, 2 * OUTAGE_S + 20,
                   f"{OUTAGE_S} s of readings acknowledged")  # fmt: skip
        assert gateway.running(), gateway.tail()
        assert gateway.get("/healthz")[0] == 200
        assert spooling()
        flood = librdkafka_lines(gateway.log_file)
        assert flood < 10, f"{flood} librdkafka lines while Kafka was down:\n{gateway.tail()}"
        kafka_later.start()
        tally = KafkaTally(kafka_later.bootstrap_servers, names.telemetry)
        ledger.stop()
        wait_until(lambda: ledger.unacked() == 0, 60, "paho's readings acknowledged")
        assert_none_lost(ledger, tally, at_least=OUTAGE_S * RATE)
        wait_until(lambda: gateway.get("/status")[1]["connectors"][0]["mode"] == "direct", 30,
                   "readings going straight to Kafka again")  # fmt: skip
        assert gateway.running()
    finally:
        ledger.close()
        if tally is not None:
            tally.close()
        gateway.stop()


def test_kafka_killed_mid_stream_loses_no_acknowledged_reading(
    tmp_path: Path, kafka_factory: Callable[[], LocalKafkaHandle]
) -> None:
    """Kafka SIGKILLed under load and started again: the gateway spools, then replays."""
    kafka = kafka_factory()
    names = Names()
    gateway = Gateway(tmp_path, names, kafka.bootstrap_servers)
    gateway.start(timeout=60)
    ledger = AckLedger(gateway.mqtt_host, gateway.mqtt_port, devices=10, rate=2 * RATE).start()
    tally = KafkaTally(kafka.bootstrap_servers, names.telemetry)
    try:
        # 2.5 s of readings on each side of the kill and 1.2 s after the restart: with
        # sequence numbers, enough to see any loss or reordering (counts were doubled).
        wait_until(lambda: len(ledger.acked) > 1000, 60, "readings acknowledged before the kill")
        kafka.kill()
        before = len(ledger.acked)
        wait_until(lambda: len(ledger.acked) > before + 1000, 60, "readings spooled meanwhile")
        assert gateway.get("/status")[1]["connectors"][0]["mode"] == "spooling"
        kafka.start()
        before = len(ledger.acked)
        wait_until(lambda: len(ledger.acked) > before + 500, 60, "readings after the restart")
        ledger.stop()
        wait_until(lambda: ledger.unacked() == 0, 60, "paho's readings acknowledged")
        assert_none_lost(ledger, tally, at_least=2500)
        assert gateway.running()
    finally:
        ledger.close()
        tally.close()
        gateway.stop()


def test_bridge_killed_while_spooling_loses_nothing(
    tmp_path: Path,
    kafka_later: LocalKafkaHandle,
    mosquitto_factory: Callable[..., BrokerHandle],
) -> None:
    """`trackside bridge run` on Mosquitto (persistent session), SIGKILLed while Kafka is
    down and it spools, then started again: nothing lost once Kafka is back. What the spool
    took is acknowledged to Mosquitto and replayed; what it had not, Mosquitto sends again."""
    broker = mosquitto_factory()
    names = Names()
    bridge = Bridge(tmp_path, names, kafka_later.bootstrap_servers, broker)
    bridge.start()
    ledger = AckLedger(broker.host, broker.port, devices=10, rate=2 * RATE).start()
    tally: KafkaTally | None = None
    try:
        spooled = "trackside_bridge_spooled_total"
        # 2.5 s of readings spooled before the kill, 1.2 s after the restart (counts halved:
        # sequence numbers show any loss or reordering as well).
        wait_until(lambda: bridge.metric(spooled) > 1000, 60, "readings in the spool")
        bridge.kill()
        bridge.start()
        wait_until(lambda: bridge.metric(spooled) > 500, 60, "readings spooled after restart")
        kafka_later.start()
        tally = KafkaTally(kafka_later.bootstrap_servers, names.telemetry)
        ledger.stop()
        assert_none_lost(ledger, tally, at_least=1500)
        assert bridge.running()
    finally:
        ledger.close()
        if tally is not None:
            tally.close()
        bridge.stop()
