"""Trackside bridge: a Kafka-Connect-style connector between MQTT and Apache Kafka."""

__all__ = ["BridgeError"]


class BridgeError(Exception):
    """Root of every error the bridge raises; the message says what to do next."""
