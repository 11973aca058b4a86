"""Debian's Mosquitto as the gateway's production broker: where it is, and a config for it."""

from __future__ import annotations

import getpass
import shutil
from pathlib import Path

from gateway import GatewayError

__all__ = ["mosquitto_binary", "mosquitto_config"]


def mosquitto_binary() -> str:
    """The `mosquitto` executable, or a GatewayError saying how to install it."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise GatewayError(
            "Debian's mosquitto is not installed: `sudo apt-get install mosquitto` "
            "(`make test` and `make demo` install it themselves)"
        )
    return binary


def mosquitto_config(port: int, data_dir: Path, extra: str = "") -> str:
    """A mosquitto.conf for one loopback listener with persistence and deep queues.

    Mosquitto's default per-client queue (1000 messages) drops QoS 1 messages for a slow
    subscriber; the bridge relies on the broker holding everything while it catches up, so
    the queues are unbounded here and the bridge applies backpressure instead. Anonymous
    clients are allowed unless `extra` says otherwise (e.g. a password and ACL file).
    """
    return (
        f"listener {port} 127.0.0.1\n"
        + ("" if "allow_anonymous" in extra else "allow_anonymous true\n")
        # Started as root, Mosquitto switches to its own user, which could not write data_dir.
        + f"user {getpass.getuser()}\n"
        + f"persistence true\npersistence_location {data_dir}/\nautosave_interval 1\n"
        "max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 0\n"
        "set_tcp_nodelay true\n"
        "log_dest stdout\nlog_type error\nlog_type warning\nlog_type notice\n"
        "log_type information\nlog_timestamp_format %H:%M:%S\n" + extra
    )
