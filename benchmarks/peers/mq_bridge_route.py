"""mq-bridge (PyPI `mq-bridge`, Rust core): one Route from an MQTT input to a Kafka output.

Its defaults are the at-least-once ones: the MQTT input acknowledges after the output
succeeded (`delayed_ack: false`) and the Kafka output waits for the broker's acknowledgement
(`delayed_ack: false`); acks=all and idempotence are passed as producer options. It forwards
the payload unchanged; the record key is mq-bridge's message id.
"""

from __future__ import annotations

import signal

import mq_bridge

from benchmarks.peers import arguments

__all__ = ["main"]


def main() -> None:
    """Run the route until SIGTERM."""
    args = arguments(__doc__ or "")
    route = mq_bridge.Route.from_config(
        {
            "input": {
                "mqtt": {
                    "url": f"tcp://{args.mqtt_host}:{args.mqtt_port}",
                    "topic": args.filter,
                    "qos": 1,
                    "client_id": args.client_id,
                    "clean_session": False,
                    "session_expiry_interval": 3600,
                    "protocol": "v5",
                    "delayed_ack": False,
                }
            },
            "output": {
                "kafka": {
                    "url": args.bootstrap_servers,
                    "topic": args.topic,
                    "create_topic": False,
                    "delayed_ack": False,
                    "producer_options": [["acks", "all"], ["enable.idempotence", "true"]],
                }
            },
        },
        name="bench",
    )
    signal.signal(signal.SIGTERM, lambda *_: mq_bridge.request_shutdown())
    route.run()


if __name__ == "__main__":
    main()
