"""The transform chain: small steps, each chosen by name from TRANSFORMS."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Protocol

from bridge.record import Message, RecordError
from bridge.wire_decoder import decode
from firmware import wire

if TYPE_CHECKING:  # the config module imports this registry
    from bridge.config import ConnectorConfig, TransformConfig

__all__ = ["TRANSFORMS", "Template", "Transform", "build_chain", "render", "template"]

_SCALES = {name: float(scale) for name, _, scale in wire.CHANNELS}
_QOS = {0: b"0", 1: b"1"}
_ONE_FIELD = re.compile(r"\{(\w+)\}")

Template = Callable[["Message"], str]


class Transform(Protocol):
    """One step: returns the message (changed in place) or None to drop it on purpose."""

    def __call__(self, msg: Message) -> Message | None: ...


def render(template: str, msg: Message) -> str:
    """Fill a `{field}` / `{topic[2]}` template from the message's fields and topic segments."""
    try:
        return template.format_map({**msg.fields, "topic": msg.topic.split("/")})
    except (KeyError, IndexError) as exc:
        raise RecordError(f"template {template!r} needs {exc}, which this message lacks") from exc


def template(text: str) -> Template:
    """`render` bound to one template; a plain text or a lone `{field}` skips format_map."""
    if "{" not in text and "}" not in text:
        return lambda _msg: text
    match = _ONE_FIELD.fullmatch(text)
    if match is None:
        return partial(render, text)
    name = match[1]

    def one_field(msg: Message) -> str:
        value = msg.fields.get(name)
        return str(value) if value is not None else render(text, msg)

    return one_field


class DecodeWire:
    """Decode wire format v2 and check that the frame's device id matches the topic's."""

    def __init__(self, step: TransformConfig, connector: ConnectorConfig) -> None:
        self.check_identity = bool((step.model_extra or {}).get("check_identity", True))

    def __call__(self, msg: Message) -> Message:
        try:
            flags, device_id, boot_id, seq, ts, values = decode(msg.payload)
        except wire.WireError as exc:
            raise RecordError(f"undecodable reading: {exc}") from exc
        topic_device = msg.fields.get("device_id")
        if self.check_identity and topic_device is not None and str(device_id) != topic_device:
            raise RecordError(
                f"device id mismatch: frame says {device_id}, topic says {topic_device}"
            )
        fields = msg.fields
        fields["device_id"] = device_id
        fields["boot_id"] = boot_id
        fields["seq"] = seq
        fields["ts_ms"] = ts
        fields["wall_clock"] = bool(flags & wire.FLAG_WALL_CLOCK)
        fields["values"] = {name: v / _SCALES[name] for name, v in values.items()}
        return msg


class Headers:
    """MQTT metadata and device identity as Kafka headers."""

    def __init__(self, step: TransformConfig, connector: ConnectorConfig) -> None:
        pass

    def __call__(self, msg: Message) -> Message:
        f = msg.fields
        headers = msg.headers
        headers.append(("mqtt.topic", msg.topic.encode()))
        headers.append(("mqtt.qos", _QOS.get(msg.qos) or str(msg.qos).encode()))
        if "train_id" in f:
            headers.append(("train.id", str(f["train_id"]).encode()))
        if "device_id" in f:
            device = str(f["device_id"])
            headers.append(("device.id", device.encode()))
            if "seq" in f:
                headers.append(("reading.id", f"{device}/{f['boot_id']}/{f['seq']}".encode()))
        return msg


class Route:
    """Choose the Kafka topic from a template, e.g. `telemetry.{train_id}`."""

    def __init__(self, step: TransformConfig, connector: ConnectorConfig) -> None:
        self.topic = template(_option(step, "topic"))

    def __call__(self, msg: Message) -> Message:
        msg.kafka_topic = self.topic(msg)
        return msg


class SetKey:
    """Choose the Kafka key from a template, e.g. `{train_id}/{device_id}`."""

    def __init__(self, step: TransformConfig, connector: ConnectorConfig) -> None:
        self.key = template(_option(step, "key"))

    def __call__(self, msg: Message) -> Message:
        msg.key = self.key(msg).encode()
        return msg


class Filter:
    """Keep (or, with `keep: false`, drop) messages whose `field` matches the regex `pattern`."""

    def __init__(self, step: TransformConfig, connector: ConnectorConfig) -> None:
        self.field = _option(step, "field")
        self.pattern = re.compile(_option(step, "pattern"))
        self.keep = bool((step.model_extra or {}).get("keep", True))

    def __call__(self, msg: Message) -> Message | None:
        value = msg.fields.get(self.field)
        matched = value is not None and self.pattern.search(str(value)) is not None
        return msg if matched == self.keep else None


def _option(step: TransformConfig, name: str) -> str:
    value = (step.model_extra or {}).get(name)
    if not isinstance(value, str):
        raise RecordError(f"transform {step.type!r} needs a string option {name!r}")
    return value


TRANSFORMS: dict[str, Callable[[TransformConfig, ConnectorConfig], Transform]] = {
    "decode_wire": DecodeWire,
    "headers": Headers,
    "route": Route,
    "set_key": SetKey,
    "filter": Filter,
}


def build_chain(config: ConnectorConfig) -> list[Transform]:
    """Instantiate the configured chain, in order."""
    return [TRANSFORMS[step.type](step, config) for step in config.transforms]
