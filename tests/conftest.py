"""Shared fixtures: real Kafka, Mosquitto and amqtt, started once per session on free ports."""

pytest_plugins = [
    "tests.fixtures.alertmanager",
    "tests.fixtures.browser",
    "tests.fixtures.kafka",
    "tests.fixtures.mqtt",
    "tests.fixtures.micropython",
    "tests.fixtures.reporting",
    "tests.fixtures.virtual_board",
]
