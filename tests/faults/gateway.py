"""`trackside gateway run` as a child process for the fault tests."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import yaml

from gateway.localkafka import free_port
from tests.fixtures.kafka import KafkaService
from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.processes import LOG_ROOT

__all__ = ["gateway_process"]


def gateway_process(tmp_path: Path, kafka: KafkaService, topic: str) -> BrokerHandle:
    """A gateway with the embedded broker and one telemetry connector on `topic` (not started;
    its port is the broker's)."""
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "broker": {"port": port},
                "connectors": [
                    {
                        "name": "telemetry",
                        "kafka": {"bootstrap_servers": kafka.bootstrap_servers, "topic": topic},
                        "errors": {"deadletterqueue_topic_name": f"{topic}.dead-letter"},
                        "spool": {"path": str(tmp_path / "spool")},
                    }
                ],
                "http": {"port": 0},
            }
        )
    )
    argv = [sys.executable, "-m", "gateway", "gateway", "run", "-c", str(config)]
    log_file = LOG_ROOT / f"gateway-{uuid.uuid4().hex[:6]}" / "gateway.log"
    return BrokerHandle("gateway", argv, "127.0.0.1", port, log_file)
