"""Peers of Trackside's bridge for `benchmarks.bridge`, each run as its own process.

Every peer takes the same arguments (`arguments()`), resumes the persistent MQTT session the
harness prepared under `--client-id`, forwards each reading to `--topic` with acks=all and
runs until SIGTERM.
"""

from __future__ import annotations

import argparse

__all__ = ["arguments"]


def arguments(description: str) -> argparse.Namespace:
    """The command line shared by all peers."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, required=True)
    parser.add_argument("--filter", required=True, help="MQTT topic filter to subscribe to")
    parser.add_argument("--client-id", required=True, help="MQTT client id (persistent session)")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True, help="Kafka topic to produce to")
    return parser.parse_args()
