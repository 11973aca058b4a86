"""Shared fixtures: real Kafka, Mosquitto and amqtt, started once per session on free ports."""

pytest_plugins = ["tests.fixtures.kafka", "tests.fixtures.mqtt", "tests.fixtures.reporting"]
