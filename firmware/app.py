# The device application: sample -> encode (wire v2) -> outbox -> MQTT QoS 1, plus status,
# retained config and commands. Board specifics come in through `board` (board_*.py).
import gc
import json
import os
import random
import time

from micropython import const

import wire
from link import LINK_ERRORS, Link

FW = "1.0.0"
STATE_FILE = "trackside.state"  # boot id and the disabled flag, kept across reboots
OPS = ("disable", "enable", "reboot", "identify", "ota")
# Bare-metal ports count seconds from 2000-01-01, the unix port from 1970.
EPOCH_MS = 946684800000 if time.gmtime(0)[0] == 2000 else 0
_BURST = const(16)  # readings sent per service round at most, so that commands stay responsive
STATUS = ('{"state":"%s","boot_id":%d,"seq":%d,"dropped":%d,"outbox":%d,"uptime_s":%d,"fw":"%s",'
          '"app":"%s","slot":"%s","board":"%s","cfg":%d,"heap":%d%s}')


class App:
    def __init__(self, cfg, board, outbox):
        self.board = board
        self.outbox = outbox  # an Outbox with slots for wire's largest frame
        self.device_id = cfg["device_id"]
        self.sample_ms = cfg.get("sample_ms", 1000)
        self.enable = {}  # channel name -> False to stop reading it (retained config)
        self.cfg = 0  # the version of the retained config applied (0: none yet), in the status
        self.seq = 0
        try:
            with open(STATE_FILE) as f:
                state = json.load(f)
        except (OSError, ValueError):
            state = {}
        self.boot_id = (state.get("boot_id", random.getrandbits(16)) + 1) & 0xFFFF
        self.disabled = state.get("disabled", False)
        self._save_state()
        base = "trackside/v1/%s/" % cfg["train_id"]
        topic = base + "%d/" % self.device_id
        # Topics built once, as bytes: a publish then allocates no topic. (From str literals:
        # a str constant is a name in the module, a bytes constant a heap object of its own.)
        self._telemetry, self._status, self._reply = (
            (topic + "telemetry").encode(), (topic + "status").encode(),
            (topic + "reply").encode())
        self.link = Link(cfg, "trackside-%d" % self.device_id, self._status,
                         (topic + "config", topic + "cmd", base + "cmd"))
        self._wall = board.sync_time()
        self._up_ms = 0
        self._status_ms = cfg.get("status_ms", 60000)
        self._status_due = 0
        # From slots.py: the release running and its slot (docs/ota.md), and what to do once
        # the first status is acknowledged (0: only clear the failed-boot marker).
        self.release = cfg.get("release", ("", "")) + (cfg.get("board", ""),)  # and the board
        self.healthy = cfg.get("healthy")
        self._update = False  # an update offered: reboot into its client once the outbox is empty

    def run(self):
        """Sample and publish until the board resets."""
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
            if self.service(next_sample):
                continue  # readings left to send: no pause
            wait = time.ticks_diff(next_sample, time.ticks_ms())
            time.sleep_ms(min(20, max(0, wait)))

    def sample(self):
        values = self.board.sensors.read(self.enable)
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
        if self.outbox.put(frame):
            if self.outbox.dropped == 1:
                print("outbox full: dropping the oldest readings; the status counts them")
            # The status goes out before any later reading: no gap in the sequence numbers
            # shows before the count that explains it.
            self._status_due = time.ticks_ms()
        gc.collect()  # the reading's floats, dicts and frame: gone before the next round

    def service(self, next_sample):
        """Connect when due, then receive, report status and drain the outbox until
        `next_sample` (ticks ms); True when readings are left to send."""
        link = self.link
        if link.client is None:
            if not link.due() or not self.board.net_up():
                return False
            try:
                link.connect()
                self._wall = self.board.sync_time()
                self.publish_status()
                print("mqtt: connected")
                if self.healthy is not None:  # the boot passed its health check (docs/ota.md)
                    if self.healthy:  # slots.healthy: confirm or report an update
                        self.healthy(self)  # (it publishes: on failure it is tried again)
                    try:
                        os.remove("ota.try")
                    except OSError:  # not booted by slots.py (a test's own harness)
                        pass
                    self.healthy = None
            except LINK_ERRORS as e:
                link.fail(e)
            gc.collect()
            return False
        sent = 0
        try:
            link.poll()
            while link.inbox:
                topic, payload = link.inbox.pop(0)
                if topic.endswith(b"/config"):
                    self.configure(payload)
                elif topic[-1] == 100:  # the "d" of .../cmd (64 B less heap than endswith)
                    self.command(payload)
                # Anything else is not for us: amqtt hands a device that reconnects fast
                # under its client id the last will of its previous connection (.../status).
            if time.ticks_diff(time.ticks_ms(), self._status_due) >= 0:
                self.publish_status()  # before the readings: it may report a drop
            frame = self.outbox.peek()
            while frame is not None:
                link.publish(self._telemetry, frame)
                self.outbox.pop()  # acknowledged: only now may it go
                self.board.feed()  # a slow broker must not starve the watchdog
                frame = self.outbox.peek()
                sent += 1
                # At least one a round; the burst ends when the next reading is due, so that
                # sampling keeps its schedule while the outbox drains.
                if sent == _BURST or time.ticks_diff(time.ticks_ms(), next_sample) >= 0:
                    break
        except LINK_ERRORS as e:
            link.fail(e)
            return False
        if frame is None and self._update:  # every reading sent: the reboot loses none
            link.client.disconnect()
            self.board.reboot()
        if sent:
            gc.collect()  # each publish leaves a packet behind
        return frame is not None

    def publish_status(self):
        rssi = self.board.rssi()  # None on a board without a radio: the key is left out
        self.link.publish(self._status, STATUS % ((
            "disabled" if self.disabled else "online", self.boot_id, self.seq,
            self.outbox.dropped, len(self.outbox), self._up_ms // 1000, FW) + self.release + (
            self.cfg, gc.mem_free(), "" if rssi is None else ',"rssi":%d' % rssi)), True)
        self._status_due = time.ticks_add(time.ticks_ms(), self._status_ms)

    def configure(self, payload):
        try:
            cfg = json.loads(payload)
            sample_ms = cfg.get("sample_ms", self.sample_ms)
            enable = cfg.get("enable", {})
            # int(), not a type check with a message of its own: 96 B less heap (64-bit), and
            # the gateway validates what it sends
            version = int(cfg.get("version", self.cfg))
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
        if version != self.cfg:  # the gateway learns at once that the version runs here
            self.cfg = version
            self._status_due = time.ticks_ms()

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
        elif op == "ota" and cmd.get("version") == self.release[0]:
            # An offer of what runs here (one queued while the board rebooted into it): the
            # health check has passed, so this is the verdict; no reboot into the client.
            msg = {"id": rid, "ok": True, "ota": "confirmed", "why": "already running this release"}
            return self.link.publish(self._reply, json.dumps(msg))
        elif op == "ota":  # its client runs alone, after a reboot (main.py, docs/ota.md)
            with open("ota.offer", "wb") as f:
                f.write(payload)
            self._update = True
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
        self.link.publish(self._reply, json.dumps(msg))

    def _save_state(self):
        with open(STATE_FILE, "w") as f:
            json.dump({"boot_id": self.boot_id, "disabled": self.disabled}, f)


random.seed(int.from_bytes(os.urandom(4), "big"))
