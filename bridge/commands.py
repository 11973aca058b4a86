"""Reverse direction: commands from a Kafka topic to the devices' MQTT command topics.

At least once: a command's offset is committed only after the broker acknowledged the
MQTT publish (QoS 1); a crash before that sends it again. A command that cannot be relayed
(not JSON, not an object, an unknown op, a train or device id outside the id rules of
bridge.record, which would put `#`, `+` or `/` into an MQTT topic) is rejected: it goes to the
connector's dead-letter topic with the reason, and its offset is committed only after Kafka
acknowledged the dead letter, so no command is lost either way.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from typing import Any, Literal, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from bridge import BridgeError
from bridge.config import ConnectorConfig
from bridge.metrics import DEAD_LETTERED
from bridge.record import id_problem, shown
from bridge.redact import mask

__all__ = [
    "CommandError",
    "CommandRelay",
    "PublishResult",
    "Publisher",
    "RelayError",
    "command_topic",
    "parse_command",
]

log = logging.getLogger(__name__)

_OPS = {"disable", "enable", "reboot", "identify"}
_MAX_ID = 128  # characters of a request id passed on to a device
# Errors retrying cannot cure: the relay stops and reports them in `failure`.
_AUTHORIZATION = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED}
Stage = Literal["VALUE_CONVERTER", "TRANSFORMATION"]
Headers = list[tuple[str, str | bytes | None]]


class CommandError(BridgeError):
    """A command record that cannot be relayed; `stage` names where, as Kafka Connect does."""

    def __init__(self, reason: str, stage: Stage = "TRANSFORMATION") -> None:
        super().__init__(reason)
        self.reason = reason
        self.stage = stage


class RelayError(BridgeError):
    """The relay cannot go on (Kafka refused it for good); it is in `CommandRelay.failure`."""


class PublishResult(Protocol):
    """What a publish returns: the broker's acknowledgement, waited for."""

    def wait_for_publish(self, timeout: float | None = None) -> None:
        """Wait up to `timeout` seconds for the broker's acknowledgement."""

    def is_published(self) -> bool:
        """True once the broker acknowledged the message."""


class Publisher(Protocol):
    """The MQTT side the relay publishes through, at QoS 1 (the connector's MQTT client)."""

    def publish(self, topic: str, payload: bytes, /) -> PublishResult:
        """Publish `payload` on `topic` at QoS 1."""


def command_topic(command: dict[str, object]) -> str:
    """The MQTT topic of a command: one device, or every device of the train.

    Raises CommandError when `train_id` or `device_id` breaks its id rule, so that no
    wildcard, level separator or other stray character reaches a topic.
    """
    train = command.get("train_id")
    if not isinstance(train, str):
        raise CommandError(f"train_id must be a string, not {type(train).__name__}")
    problem = id_problem("train_id", train)
    if problem is not None:
        raise CommandError(problem)
    device = command.get("device_id")
    if device is None:
        return f"trackside/v1/{train}/cmd"
    if isinstance(device, bool) or not isinstance(device, int | str):
        raise CommandError(f"device_id must be a number or null, not {type(device).__name__}")
    problem = id_problem("device_id", str(device))
    if problem is not None:
        raise CommandError(problem)
    return f"trackside/v1/{train}/{device}/cmd"


def parse_command(value: bytes | None) -> tuple[str, bytes]:
    """The MQTT topic and payload of a command record; CommandError says why not."""
    try:
        command: Any = json.loads(value or b"")
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise CommandError(f"not JSON: {exc}", "VALUE_CONVERTER") from exc
    if not isinstance(command, dict):
        raise CommandError(
            f"a command is a JSON object, not {type(command).__name__}", "VALUE_CONVERTER"
        )
    op = command.get("op")
    if not isinstance(op, str) or op not in _OPS:
        shown_op = shown(op) if isinstance(op, str) else type(op).__name__
        raise CommandError(f"op {shown_op} is not one of {', '.join(sorted(_OPS))}")
    topic = command_topic(command)
    request_id = command.get("id") or uuid.uuid4().hex
    if not isinstance(request_id, str) or len(request_id) > _MAX_ID:
        raise CommandError(f"id must be a string of at most {_MAX_ID} characters")
    return topic, json.dumps({"id": request_id, "op": op}).encode()


class CommandRelay:
    """A thread that moves `{"train_id", "device_id", "op", "id"}` records to MQTT.

    Health: `failure` is None while the relay runs (or after a clean `stop()`); when its
    thread ends by an error it cannot get past, `failure` holds the reason (a string naming
    what to do next), the thread is gone and no more commands are relayed: the connector
    reports itself failed. A rejected command never ends the thread (see the module docstring);
    `errors.tolerance: none` makes a rejected command such a failure, as Kafka Connect does.
    Counters: `relayed`, `rejected` (dead-lettered, or dropped when no dead-letter topic is set).
    """

    def __init__(self, config: ConnectorConfig, mqtt: Publisher) -> None:
        if config.commands is None:
            raise BridgeError("a command relay needs the connector's `commands` section")
        self.config = config
        self.topic = config.commands.topic
        self.mqtt = mqtt
        # Security and other librdkafka settings apply to both clients, as to the connector's.
        # librdkafka's own log lines repeat every connection attempt while Kafka is away; its
        # errors reach the relay through poll() and commit().
        settings = {"bootstrap.servers": config.kafka.bootstrap_servers, "log_level": 2}
        try:
            self.consumer = Consumer(
                {
                    **settings,
                    "group.id": config.commands.group_id,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                    **config.kafka.settings,
                }
            )
            self.producer = Producer(
                {
                    **settings,
                    "client.id": f"trackside-{config.name}-commands",
                    "enable.idempotence": True,
                    "acks": "all",
                    **config.kafka.settings,
                }
            )
        except KafkaException as exc:
            refused = mask(str(exc), config.kafka.settings)
            raise RelayError(f"kafka.settings: librdkafka refused them: {refused}") from exc
        self.relayed = 0
        self.rejected = 0
        self.failure: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="command-relay", daemon=True)

    def start(self) -> None:
        """Subscribe and start relaying."""
        self.consumer.subscribe([self.topic])
        self._thread.start()

    def stop(self) -> None:
        """Stop after the command in hand; close the consumer and the dead-letter producer."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(10)
        self.consumer.close()
        if self.producer.flush(5) == 0:
            self.producer.close()
        else:  # the command of that dead letter was not committed: it is read again
            log.warning("a rejected command's dead letter was not acknowledged before stopping")

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                msg = self.consumer.poll(0.5)
                if msg is not None:
                    self._handle(msg)
        except Exception as exc:  # reported through `failure`, which the connector reads
            detail = str(exc) if isinstance(exc, BridgeError) else repr(exc)
            self.failure = f"the command relay stopped: {detail}"
            log.exception("the command relay of connector %s stopped", self.config.name)

    def _handle(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.fatal() or err.code() in _AUTHORIZATION:
                raise RelayError(
                    f"reading {self.topic}: {err.str()}; check commands.topic, "
                    "commands.group_id and the Kafka ACLs"
                )
            log.debug("command consumer: %s", err.str())  # librdkafka retries by itself
            return
        try:
            topic, payload = parse_command(msg.value())
        except CommandError as exc:
            if self._reject(msg, exc):
                self._commit(msg)
            return
        while not self._stop.is_set():
            info = self.mqtt.publish(topic, payload)
            info.wait_for_publish(5)
            if info.is_published():
                break
            log.warning("MQTT did not acknowledge a command yet; retrying")
        else:
            return  # stopping: not committed, so it is relayed after the restart
        self.relayed += 1
        self._commit(msg)

    def _reject(self, msg: Message, exc: CommandError) -> bool:
        """Dead-letter a command; True once Kafka has it (or no dead-letter topic is set)."""
        where = f"{msg.topic()} [{msg.partition()}] at offset {msg.offset()}"
        errors = self.config.errors
        if errors.tolerance == "none":
            raise RelayError(f"command in {where} rejected ({exc.reason}); errors.tolerance=none")
        dead_letter_topic = errors.deadletterqueue_topic_name
        if dead_letter_topic is None:
            log.warning("dropped a command in %s: %s (no dead-letter topic set)", where, exc)
            self.rejected += 1
            return True
        headers: Headers = []
        if errors.deadletterqueue_context_headers_enable:
            headers = [
                ("__connect.errors.topic", (msg.topic() or self.topic).encode()),
                ("__connect.errors.partition", str(msg.partition()).encode()),
                ("__connect.errors.offset", str(msg.offset()).encode()),
                ("__connect.errors.connector.name", self.config.name.encode()),
                ("__connect.errors.stage", exc.stage.encode()),
                ("__connect.errors.exception.class.name", type(exc).__name__.encode()),
                ("__connect.errors.exception.message", exc.reason.encode()),
            ]
        if not self._produce(dead_letter_topic, msg.key(), msg.value() or b"", headers):
            return False
        log.warning("rejected a command in %s: %s", where, exc.reason)
        self.rejected += 1
        DEAD_LETTERED.labels(connector=self.config.name, reason=type(exc).__name__).inc()
        return True

    def _produce(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> bool:
        """Produce one record and wait for Kafka's report; False if stopped before it came.

        Transient errors are retried (the idempotent producer keeps them in order); an error
        retrying cannot cure raises RelayError.
        """
        reports: list[KafkaError | None] = []  # one per produce: each is waited for
        while True:
            reports.clear()
            try:
                self.producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=headers,
                    on_delivery=lambda err, _msg: reports.append(err),
                )
            except BufferError:  # cannot stay full: one record at a time, each flushed
                self.producer.poll(0.1)
                continue
            except KafkaException as exc:
                raise RelayError(f"the dead-letter producer refused a record: {exc}") from exc
            while not reports:
                if self._stop.is_set():
                    return False
                self.producer.flush(1.0)
            err = reports[0]
            if err is None:
                return True
            if err.fatal() or not (err.retriable() or err.code() == KafkaError._MSG_TIMED_OUT):
                raise RelayError(
                    f"Kafka did not take a dead letter on {topic}: {err.str()}; check "
                    "errors.deadletterqueue_topic_name and the Kafka ACLs"
                )
            log.warning("Kafka did not take a dead letter yet (%s); retrying", err.str())
            if self._stop.wait(1.0):
                return False

    def _commit(self, msg: Message) -> None:
        """Commit past `msg`. An uncommitted offset is read again after a rebalance or a
        restart (at least once), and the next commit covers it: only errors that retrying
        cannot cure stop the relay."""
        try:
            self.consumer.commit(message=msg, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is None or err.fatal() or err.code() in _AUTHORIZATION:
                raise RelayError(
                    f"committing a command's offset failed: {exc}; check commands.group_id "
                    "and the Kafka ACLs"
                ) from exc
            log.warning("a command's offset was not committed (%s); it may come again", err.str())
