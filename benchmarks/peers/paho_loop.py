"""The loop most people write: paho-mqtt on_message -> confluent-kafka produce (acks=all).

paho acknowledges a QoS 1 message (PUBACK) as soon as `on_message` returns, which is when the
record is only queued in librdkafka, not yet in Kafka: a crash then loses what was queued
(at most once). That is the point of comparison with Trackside, which acknowledges after
Kafka's delivery report. The Kafka key is the train id from the topic, the value the payload.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import paho.mqtt.client as mqtt
from confluent_kafka import Producer
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.peers import arguments

__all__ = ["main"]


def main() -> None:
    """Forward until SIGTERM, then flush."""
    args = arguments(__doc__ or "")
    producer = Producer(
        {"bootstrap.servers": args.bootstrap_servers, "acks": "all", "enable.idempotence": True}
    )

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        train = msg.topic.split("/")[2]
        while True:
            try:
                producer.produce(args.topic, msg.payload, train.encode())
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        client.subscribe(args.filter, qos=1)

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5
    )
    client.on_message = on_message
    client.on_connect = on_connect
    client.connect(args.mqtt_host, args.mqtt_port, clean_start=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()
    producer.flush(30)


if __name__ == "__main__":
    main()
