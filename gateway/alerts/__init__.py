"""The alert service: rules over the telemetry topic, exactly-once alerts and maintenance flags.

`rules` loads and validates rule files, `engine` evaluates readings against them (pure, no
I/O), `state` holds what the engine remembers, `service` is the Kafka transactional loop.
"""

from gateway import GatewayError

__all__ = ["AlertError"]


class AlertError(GatewayError):
    """Root of the alert service's errors; the message says what to do next."""
