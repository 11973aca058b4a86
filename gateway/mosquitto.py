"""Debian's Mosquitto as the gateway's production broker: where it is, and a config for it."""

from __future__ import annotations

import getpass
import grp
import os
import pwd
import shutil
from pathlib import Path

from gateway import GatewayError

__all__ = [
    "MAX_PACKET_BYTES",
    "MOSQUITTO_GROUP",
    "mosquitto_binary",
    "mosquitto_config",
    "mosquitto_may_read",
    "share_with_mosquitto",
]

MOSQUITTO_GROUP = "mosquitto"  # Debian's mosquitto package runs the broker as this user and group
# Mosquitto's `max_packet_size` counts the whole packet: the embedded broker's payload limit
# (broker.max_payload_bytes, 256 KiB) plus room for the topic and the header. Without a limit
# Mosquitto takes up to 256 MB per message and hands the bridge what Kafka (message.max.bytes,
# 1 MB) refuses; a larger packet closes the publisher's connection.
MAX_PACKET_BYTES = 256 * 1024 + 4096


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
    the queues are unbounded here and the bridge applies backpressure instead. A packet
    larger than MAX_PACKET_BYTES closes its connection, unless `extra` sets `max_packet_size`.
    Anonymous clients are allowed unless `extra` says otherwise (e.g. a password and ACL file).
    """
    return (
        f"listener {port} 127.0.0.1\n"
        + ("" if "allow_anonymous" in extra else "allow_anonymous true\n")
        # Started as root, Mosquitto switches to its own user, which could not write data_dir.
        + f"user {getpass.getuser()}\n"
        + ("" if "max_packet_size" in extra else f"max_packet_size {MAX_PACKET_BYTES}\n")
        + f"persistence true\npersistence_location {data_dir}/\nautosave_interval 1\n"
        "max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 0\n"
        "set_tcp_nodelay true\n"
        "log_dest stdout\nlog_type error\nlog_type warning\nlog_type notice\n"
        "log_type information\nlog_timestamp_format %H:%M:%S\n" + extra
    )


def share_with_mosquitto(fd: int) -> bool:
    """Make an open file readable by Debian's Mosquitto: mode 640, group `mosquitto`.

    Mosquitto started as root drops privileges to user `mosquitto` before it reads its password,
    ACL and key files, so a 600 file owned by anyone else stops it at start. Returns False (the
    file stays 600) when there is no such group or this user may not give files to it; the
    caller tells the operator what to run instead.
    """
    try:
        gid = grp.getgrnam(MOSQUITTO_GROUP).gr_gid
        os.fchown(fd, -1, gid)
    except (KeyError, PermissionError):
        return False
    os.fchmod(fd, 0o640)
    return True


def mosquitto_may_read(path: Path) -> bool:
    """False if the `mosquitto` group exists and that user could not read `path` by its mode
    (directories on the way are not checked); True without Mosquitto."""
    try:
        group = grp.getgrnam(MOSQUITTO_GROUP)
    except KeyError:
        return True
    try:
        uid = pwd.getpwnam(MOSQUITTO_GROUP).pw_uid
    except KeyError:
        uid = -1
    info = path.stat()
    return bool(
        info.st_mode & 0o004
        or (info.st_gid == group.gr_gid and info.st_mode & 0o040)
        or (info.st_uid == uid and info.st_mode & 0o400)
    )
