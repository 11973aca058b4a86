# The device application: sample -> encode (wire v1) -> outbox -> MQTT QoS 1, plus status,
# retained config and commands. Board specifics come in through `board` (board_*.py).
import gc
import json
import os
import random
import time

import wire
from link import Link
from outbox import Outbox
from umqtt.simple import MQTTException

FW = "1.0.0"
STATE_FILE = "trackside.state"  # boot id and the disabled flag, kept across reboots
OPS = ("disable", "enable", "reboot", "identify")
# umqtt.simple reports a broken connection as any of these.
LINK_ERRORS = (OSError, MQTTException, IndexError, AssertionError)
# Bare-metal ports count seconds from 2000-01-01, the unix port from 1970.
EPOCH_MS = 946684800000 if time.gmtime(0)[0] == 2000 else 0


class App:
    def __init__(self, cfg, board):
        self.board = board
        self.device_id = cfg["device_id"]
        self.sample_ms = cfg.get("sample_ms", 1000)
        self.enable = {}
        self.seq = 0
        self.outbox = Outbox(cfg.get("outbox", 256))
        state = _load_state()
        self.boot_id = (state.get("boot_id", random.getrandbits(16)) + 1) & 0xFFFF
        self.disabled = state.get("disabled", False)
        self._save_state()
        base = "trackside/v1/%s/" % cfg["train_id"]
        self.topic = base + "%d/" % self.device_id
        self.link = Link(cfg, "trackside-%d" % self.device_id, self.topic + "status",
                         (self.topic + "config", self.topic + "cmd", base + "cmd"), _rand)
        self._wall = board.sync_time()
        self._up_ms = 0
        self._status_ms = cfg.get("status_ms", 60000)
        self._status_due = 0

    def run(self):
        """Sample and publish until the board resets."""
        self.board.start_watchdog(self.link.keepalive_s * 1000)
        last = next_sample = time.ticks_ms()
        while True:
            self.board.feed()
            now = time.ticks_ms()
            self._up_ms += time.ticks_diff(now, last)
            last = now
            if time.ticks_diff(now, next_sample) >= 0:
                if time.ticks_diff(now, next_sample) > self.sample_ms:
                    next_sample = now  # late (blocked on the network): no burst of catch-ups
                next_sample = time.ticks_add(next_sample, self.sample_ms)
                if not self.disabled:
                    self.sample()
            self.service()
            wait = time.ticks_diff(next_sample, time.ticks_ms())
            time.sleep_ms(min(20, max(0, wait)))

    def sample(self):
        values = self.board.sensors.read(self._enabled)
        scaled = {}
        for name in values:
            v = values[name]
            if v is not None:
                scaled[name] = int(round(v * wire.scale(name)))
        if self._wall:
            ts, flags = time.time_ns() // 1000000 + EPOCH_MS, wire.FLAG_WALL_CLOCK
        else:
            ts, flags = self._up_ms, 0
        try:
            frame = wire.encode(self.device_id, self.boot_id, self.seq, ts, scaled, flags)
        except wire.WireError as e:  # a sensor gone mad: say so, keep the device running
            print("reading %d not sent: %s" % (self.seq, e))
            return
        self.seq += 1
        self.outbox.put(frame)
        gc.collect()

    def _enabled(self, name):
        return self.enable.get(name, True)

    def service(self):
        """Connect when due, then receive, drain the outbox and report status."""
        link = self.link
        if link.client is None:
            if not link.due() or not self.board.net_up():
                return
            try:
                link.connect()
                self._wall = self.board.sync_time()
                self.publish_status()
                print("mqtt: connected")
            except LINK_ERRORS as e:
                link.fail(e)
            return
        try:
            link.poll()
            while link.inbox:
                topic, payload = link.inbox.pop(0)
                self.handle(topic.decode(), payload)
            frame = self.outbox.peek()
            sent = 0
            while frame is not None and sent < 32:  # bounded: commands stay responsive
                link.publish(self.topic + "telemetry", frame)
                self.outbox.pop()  # acknowledged: only now may it go
                frame = self.outbox.peek()
                sent += 1
            if time.ticks_diff(time.ticks_ms(), self._status_due) >= 0:
                self.publish_status()
        except LINK_ERRORS as e:
            link.fail(e)

    def publish_status(self):
        state = "disabled" if self.disabled else "online"
        self.link.publish(self.topic + "status", json.dumps({
            "state": state, "boot_id": self.boot_id, "seq": self.seq,
            "dropped": self.outbox.dropped, "outbox": len(self.outbox),
            "uptime_s": self._up_ms // 1000, "fw": FW}), True)
        self._status_due = time.ticks_add(time.ticks_ms(), self._status_ms)

    def handle(self, topic, payload):
        if topic.endswith("/config"):
            self.configure(payload)
        else:
            self.command(payload)

    def configure(self, payload):
        try:
            cfg = json.loads(payload)
            sample_ms = cfg.get("sample_ms", self.sample_ms)
            enable = cfg.get("enable", {})
            if not isinstance(sample_ms, int) or not 100 <= sample_ms <= 3600000:
                raise ValueError("sample_ms must be an integer from 100 to 3600000")
            for name in enable:
                if name not in wire.CHANNEL_IDS or not isinstance(enable[name], bool):
                    raise ValueError("enable: %s is not a channel or not a boolean" % name)
        except (ValueError, AttributeError, TypeError) as e:
            print("config ignored: %s" % e)
            return
        self.sample_ms = sample_ms
        self.enable.update(enable)

    def command(self, payload):
        try:
            cmd = json.loads(payload)
            rid, op = cmd.get("id"), cmd.get("op")
        except (ValueError, AttributeError):
            return self.reply(None, "malformed command: expected a JSON object with id and op")
        if not isinstance(rid, str):
            return self.reply(None, "malformed command: id must be a string")
        if op not in OPS:
            return self.reply(rid, "unknown op %r: expected one of %s" % (op, ", ".join(OPS)))
        if op == "identify":
            self.board.identify()
        elif op == "reboot":
            self.reply(rid)
            self.link.client.disconnect()  # a clean goodbye: no last will for a planned reboot
            self.board.reboot()
        elif self.disabled != (op == "disable"):
            self.disabled = op == "disable"
            self._save_state()
            self.publish_status()
        self.reply(rid)

    def reply(self, rid, error=None):
        msg = {"id": rid, "ok": error is None, "state": "disabled" if self.disabled else "online"}
        if error is not None:
            msg["error"] = error
        self.link.publish(self.topic + "reply", json.dumps(msg))

    def _save_state(self):
        with open(STATE_FILE, "w") as f:
            json.dump({"boot_id": self.boot_id, "disabled": self.disabled}, f)


def _load_state():
    try:
        with open(STATE_FILE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _rand(n):
    return random.getrandbits(24) % n


random.seed(int.from_bytes(os.urandom(4), "big"))
