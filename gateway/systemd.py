"""A systemd unit for `trackside gateway run`, written for the interpreter that runs this."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["unit_text"]


def unit_text(config: Path, user: str, state_dir: Path) -> str:
    """The unit: restarts on failure, stops with SIGTERM (the gateway drains), hardened."""
    trackside = Path(sys.executable).with_name("trackside")
    return f"""[Unit]
Description=Trackside gateway: MQTT broker, bridge to Kafka, alerts, dashboard
Wants=network-online.target
After=network-online.target mosquitto.service

[Service]
Type=simple
User={user}
WorkingDirectory={state_dir}
ExecStart={trackside} gateway run --config {config}
# SIGTERM makes every connector drain: in-flight readings reach Kafka or the spool first.
KillSignal=SIGTERM
TimeoutStopSec=60
Restart=on-failure
RestartSec=5
# Hardening: the gateway writes only its state folder (spool, registry).
NoNewPrivileges=true
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths={state_dir}
PrivateTmp=true
MemoryMax=300M

[Install]
WantedBy=multi-user.target
"""
