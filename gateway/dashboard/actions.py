"""Operator actions: produced to the operator-actions topic, never applied locally.

The alert service turns an `ack` into an "acknowledged" alert event and a `clear` into a
maintenance record with `flagged=false`; every dashboard shows the result when it comes back
from Kafka, so all of them agree.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import Future
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from gateway.dashboard import DashboardError
from gateway.dashboard.clients import kafka_client
from gateway.dashboard.config import DashboardConfig

__all__ = [
    "ActionError",
    "ActionProducer",
    "ack_action",
    "clear_action",
    "window_action",
    "window_end_action",
]


class ActionError(DashboardError):
    """Kafka did not take an operator action."""


def ack_action(key: str, by: str) -> dict[str, Any]:
    """The `ack` action for one alert key, as docs/architecture.md defines it."""
    return {"action": "ack", "key": key, "by": by, "at_ms": int(time.time() * 1000)}


def clear_action(train_id: str, by: str) -> dict[str, Any]:
    """The `clear` action for one train's maintenance flag."""
    return {"action": "clear", "train_id": train_id, "by": by, "at_ms": int(time.time() * 1000)}


def window_action(
    train_id: str, by: str, silence_id: str, until_ms: int, comment: str
) -> dict[str, Any]:
    """The record of a maintenance window set (an Alertmanager silence of the train's alerts);
    the alert service passes over it: the silence itself lives in Alertmanager."""
    return {
        "action": "maintenance_window",
        "train_id": train_id,
        "by": by,
        "at_ms": int(time.time() * 1000),
        "silence_id": silence_id,
        "until_ms": until_ms,
        "comment": comment,
    }


def window_end_action(train_id: str, by: str, silence_id: str) -> dict[str, Any]:
    """The record of a maintenance window removed (its silence expired)."""
    return {
        "action": "maintenance_window_end",
        "train_id": train_id,
        "by": by,
        "at_ms": int(time.time() * 1000),
        "silence_id": silence_id,
    }


class ActionProducer:
    """An idempotent acks=all producer; `send` waits for Kafka's delivery report."""

    def __init__(self, config: DashboardConfig) -> None:
        self.topic = config.topics.operator_actions
        settings = {"enable.idempotence": True, "acks": "all", "message.timeout.ms": 10_000}
        self._producer = kafka_client(Producer, config, settings)
        self._running = True
        self._poller = threading.Thread(target=self._poll, name="dashboard-actions", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while self._running:
            self._producer.poll(0.1)

    async def send(self, key: str, action: dict[str, Any]) -> None:
        """Produce one action keyed by alert key or train id; raises ActionError on failure."""
        delivered: Future[None] = Future()

        def on_delivery(error: KafkaError | None, _msg: Any) -> None:
            if error is None:
                delivered.set_result(None)
            else:
                delivered.set_exception(
                    ActionError(f"Kafka refused the {action['action']} action: {error}")
                )

        try:
            self._producer.produce(
                self.topic, key=key.encode(), value=json.dumps(action), on_delivery=on_delivery
            )
        except (BufferError, KafkaException) as exc:
            raise ActionError(f"could not queue the action, try again: {exc}") from exc
        await asyncio.wrap_future(delivered)

    def close(self) -> None:
        """Deliver what is queued (up to 10 s) and stop the poll thread."""
        self._running = False
        self._poller.join(timeout=5)
        if not self._producer.flush(10):
            self._producer.close()  # disconnect now, not when the object is collected
