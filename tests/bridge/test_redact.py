"""Secrets among librdkafka settings never reach an error message: the masking itself, and the
messages of the connector's, the alert service's and the dashboard's Kafka clients when
librdkafka refuses their settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Producer
from pydantic import SecretStr

from bridge.commands import CommandRelay, RelayError
from bridge.config import CommandsConfig, ConnectorConfig, KafkaTarget, SpoolConfig
from bridge.kafka_sink import KafkaSink, SinkError
from bridge.mqtt_source import MqttSourceClient
from bridge.redact import MASK, is_secret, mask
from gateway.alerts import AlertError
from gateway.alerts.kafka_link import make_client
from gateway.dashboard import DashboardError
from gateway.dashboard.clients import kafka_client
from gateway.dashboard.config import DashboardConfig

SECRET = "hunter2-Kafka-Password"
# A password pasted into the wrong key as well: librdkafka quotes the value it refuses.
REFUSED = {"sasl.password": SECRET, "security.protocol": SECRET}


@pytest.mark.parametrize(
    ("name", "secret"),
    [("sasl.password", True), ("ssl.key.password", True), ("ssl.key.pem", True),
     ("ssl.keystore.password", True), ("sasl.oauthbearer.client.secret", True),
     ("sasl.oauthbearer.config", True), ("SASL.PASSWORD", True),
     ("security.protocol", False), ("sasl.username", False), ("bootstrap.servers", False)],
)
def test_which_settings_are_secrets(name: str, secret: bool) -> None:
    assert is_secret(name) is secret


def test_mask_replaces_every_secret_value_longest_first() -> None:
    settings = {"sasl.password": "abc", "ssl.key.password": "abcdef", "sasl.username": "bob",
                "enable.idempotence": True, "sasl.oauthbearer.client.secret": ""}
    text = 'Invalid value "abcdef" for "x"; abc; bob; true'
    assert mask(text, settings) == f'Invalid value "{MASK}" for "x"; {MASK}; bob; true'


def test_the_connectors_refused_settings_hide_the_secret(tmp_path: Path) -> None:
    config = ConnectorConfig(
        kafka=KafkaTarget(settings=REFUSED), spool=SpoolConfig(path=tmp_path / "spool")
    )
    with pytest.raises(SinkError) as refused:
        KafkaSink(config)
    message = str(refused.value)
    assert "security.protocol" in message and MASK in message  # still says what is wrong
    assert SECRET not in message


def test_the_command_relays_refused_settings_hide_the_secret() -> None:
    config = ConnectorConfig(kafka=KafkaTarget(settings=REFUSED), commands=CommandsConfig())
    with pytest.raises(RelayError) as refused:
        CommandRelay(config, MqttSourceClient(config.mqtt, lambda *_: None))
    message = str(refused.value)
    assert "security.protocol" in message and MASK in message
    assert SECRET not in message


def test_the_alert_services_refused_settings_hide_the_secret() -> None:
    with pytest.raises(AlertError) as refused:
        make_client(Producer, {"bootstrap.servers": "127.0.0.1:9", **REFUSED})
    assert "security.protocol" in str(refused.value) and SECRET not in str(refused.value)


def test_the_dashboards_refused_settings_hide_the_secret() -> None:
    config = DashboardConfig(
        bootstrap_servers="127.0.0.1:9", token=SecretStr("t"), kafka_settings=REFUSED
    )
    with pytest.raises(DashboardError) as refused:
        kafka_client(Producer, config, {})
    assert "security.protocol" in str(refused.value) and SECRET not in str(refused.value)
