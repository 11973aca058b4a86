"""The MQTT session of firmware/link.py on the MicroPython unix port: a PUBLISH leaves in one
write, byte for byte what umqtt.simple would send; the reconnect delay stays within the bounds
that docs/firmware.md states, jittered from the first retry on; the broker port follows TLS.
(The device over TLS against real brokers: test_link_tls.py.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.certs import make_certificates
from gateway.devicetools.deploy import ca_board_file
from gateway.firmware_bundle import ensure_umqtt
from tests.fixtures.micropython import micropython_binary

pytestmark = pytest.mark.integration

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"

# A socket that records every write and answers each read from a PUBACK for the packet id the
# client will use next. umqtt's own publish is kept aside before link.py replaces it.
PUBLISH_SCRIPT = """
import sys, json
sys.path.insert(0, %(firmware)r)
sys.path.insert(0, %(lib)r)
import umqtt.simple
umqtt_publish = umqtt.simple.MQTTClient.publish
import link

class Sock:
    def __init__(self, pid):
        self.writes = []
        self.rx = bytes((0x40, 2, pid >> 8, pid & 255))
    def write(self, data, n=None):
        if isinstance(data, str):
            data = data.encode()
        self.writes.append(bytes(data[:len(data) if n is None else n]))
    def read(self, n):
        data, self.rx = self.rx[:n], self.rx[n:]
        return data
    def setblocking(self, flag):
        pass

def publish(fn, pid, topic, msg, retain):
    c = umqtt.simple.MQTTClient("t", "localhost")
    c.pid = pid
    c.sock = Sock(pid %% 65535 + 1)
    fn(c, topic, msg, retain, 1)
    return {"writes": [w.hex() for w in c.sock.writes], "pid": c.pid}

for topic, msg, retain, pid in json.loads(%(cases)r):
    ours = publish(link.MQTTClient.publish, pid, topic.encode(), msg, retain)
    # past 65534 umqtt's packet id no longer fits two bytes: it waits for a PUBACK forever
    theirs = publish(umqtt_publish, pid, topic.encode(), msg, retain) if pid < 65535 else None
    print(json.dumps({"umqtt": theirs, "link": ours}))
"""

# Fresh Links, each failing eight times in a row; every failure prints its delay.
BACKOFF_SCRIPT = """
import sys
sys.path.insert(0, %(firmware)r)
sys.path.insert(0, %(lib)r)
import link

cfg = {"broker": {"host": "localhost"}, "backoff_ms": [%(low)d, %(high)d]}
for trial in range(%(trials)d):
    session = link.Link(cfg, "t", "will", ())
    for failure in range(8):
        session.fail(OSError(111))
"""


# The port a Link gives umqtt with TLS off and on, with and without a port in the config, and
# whether the Link stands in for umqtt's `ussl` module (it wraps the socket with TLS on).
PORT_SCRIPT = """
import sys
sys.path.insert(0, %(firmware)r)
sys.path.insert(0, %(lib)r)
import link

for broker in ({"host": "gw"}, {"host": "gw", "tls": True}, {"host": "gw", "port": 1884},
               {"host": "gw", "port": 8884, "tls": True}):
    session = link.Link({"broker": broker}, "t", "will", ())
    client = link.MQTTClient(*session._args, ssl=session._tls)
    print(client.port, sys.modules.get("ussl") is session)
"""


def _lib(tmp_path: Path) -> Path:
    """A folder holding umqtt/simple.py, as a board's lib/ does."""
    lib = tmp_path / "lib"
    (lib / "umqtt").mkdir(parents=True)
    shutil.copy(ensure_umqtt(), lib / "umqtt" / "simple.py")
    return lib


def _run(script: str, cwd: Path | None = None) -> str:
    return subprocess.run([str(micropython_binary()), "-c", script], capture_output=True,
                          text=True, timeout=120, check=True, cwd=cwd).stdout


def _remaining_length(packet: bytes) -> tuple[int, int]:
    """MQTT's variable-length integer after the first byte: (value, bytes it took)."""
    value = 0
    for i, byte in enumerate(packet[1:5]):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
    raise AssertionError(f"malformed remaining length in {packet.hex()}")


def _publish(tmp_path: Path, cases: list[tuple[str, str, bool, int]]) -> list[dict[str, Any]]:
    script = PUBLISH_SCRIPT % {"firmware": str(FIRMWARE), "lib": str(_lib(tmp_path)),
                               "cases": json.dumps(cases)}
    rows = [json.loads(line) for line in _run(script).splitlines()]
    assert len(rows) == len(cases)
    return rows


def test_a_publish_is_one_write_of_the_packet_umqtt_would_send(tmp_path: Path) -> None:
    topic = "trackside/v1/T1/42/telemetry"
    rows = _publish(tmp_path, [
        (topic, "a 32-byte reading, as the app...", False, 0),
        (topic.replace("telemetry", "status"), '{"state":"online"}' * 9, True, 41),  # > 127 B
        (topic, "the last packet id before the wrap", False, 65534),
    ])
    for row in rows:
        assert len(row["umqtt"]["writes"]) == 5  # header, topic length, topic, packet id, payload
        assert len(row["link"]["writes"]) == 1, row
        assert row["link"]["writes"][0] == "".join(row["umqtt"]["writes"]), row
        assert row["link"]["pid"] == row["umqtt"]["pid"]


def test_a_payload_of_utf8_text_is_counted_in_bytes(tmp_path: Path) -> None:
    payload = '{"id":"caf\u00e9"}'  # a reply naming a command id in any UTF-8 text
    row = _publish(tmp_path, [("t", payload, False, 7)])[0]["link"]
    packet = bytes.fromhex(row["writes"][0])
    length, size = _remaining_length(packet)
    assert length == len(packet) - 1 - size
    assert packet.endswith(payload.encode())


def test_the_packet_id_wraps_from_65535_to_1(tmp_path: Path) -> None:
    row = _publish(tmp_path, [("t", "x", False, 65535)])[0]["link"]
    assert row["pid"] == 1
    assert row["writes"][0].endswith("0001" + b"x".hex())  # packet id 1, then the payload


def test_reconnect_delay_is_jittered_from_the_first_retry_and_never_beyond_the_cap(
    tmp_path: Path,
) -> None:
    low, high, trials = 1000, 30000, 300
    script = BACKOFF_SCRIPT % {"firmware": str(FIRMWARE), "lib": str(_lib(tmp_path)),
                               "low": low, "high": high, "trials": trials}
    delays = [int(d) for d in re.findall(r"retry in (\d+) ms", _run(script))]
    assert len(delays) == trials * 8
    by_failure = [delays[n::8] for n in range(8)]
    for n, seen in enumerate(by_failure, start=1):
        window = min(high, low << n)  # docs/firmware.md: min + random(0 .. window - min)
        assert low <= min(seen) and max(seen) <= window, (n, min(seen), max(seen))
    first = by_failure[0]
    assert max(first) - min(first) > 500, "the first retry is not jittered over 1-2 s"
    capped = [d for seen in by_failure[4:] for d in seen]  # 1 s << 5 is past the 30 s cap
    assert max(capped) > high * 0.95  # the whole window is used, up to the cap


def test_the_port_is_8883_with_tls_unless_the_config_names_one(tmp_path: Path) -> None:
    make_certificates(tmp_path / "certs", ["gw"])
    ca = ca_board_file(tmp_path / "certs" / "ca.pem")
    (tmp_path / ca.target).write_bytes(ca.data)  # read at boot, from the board's root
    script = PORT_SCRIPT % {"firmware": str(FIRMWARE), "lib": str(_lib(tmp_path))}
    rows = _run(script, cwd=tmp_path).split()
    assert rows == ["1883", "False", "8883", "True", "1884", "False", "8884", "True"]
