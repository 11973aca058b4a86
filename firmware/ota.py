# The update client (docs/ota.md). It runs alone, after a reboot, with only the board layer
# and the MQTT link: the app's heap stays the app's, and the code that fetches an update is
# the code that safe mode runs. It checks the offered release's signature, pulls its files
# chunk by chunk into the inactive slot (resuming from what is on flash after a disconnect or
# a power loss), checks every file's SHA-256 and only then switches slots and reboots.
import gc
import json
import os
import struct
import sys
import time
from binascii import hexlify, unhexlify
from hashlib import sha256

from link import LINK_ERRORS, Link

OFFER = "ota.offer"  # the offer as the app received it; main.py boots this client while it exists
MANIFEST = "/manifest.json"  # in the slot: which release its files are, for resuming


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def _hash(path):
    h = sha256()
    buf = bytearray(256)  # a small buffer: the file need not fit in the heap
    with open(path, "rb") as f:
        while 1:
            n = f.readinto(buf)
            if not n:
                return hexlify(h.digest()).decode()
            h.update(buf if n == 256 else buf[:n])


def _rm(path):
    try:
        os.remove(path)
    except OSError:
        pass  # not there


def _wipe(path):
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        p = path + "/" + name
        try:
            os.remove(p)
        except OSError:  # a folder (lib/)
            _wipe(p)
            os.rmdir(p)


def _mkdirs(path):
    i = path.find("/")
    while i > 0:
        try:
            os.mkdir(path[:i])
        except OSError:
            pass  # there already
        i = path.find("/", i + 1)


class Updater:
    def __init__(self, cfg, board, state, save, safe):
        self.board = board
        self.state = state  # main.py's ota.json, written with `save`
        self.save = save
        self.safe = safe  # safe mode: wait for an update or a reboot, never give up
        self.kind = cfg["board"]
        keys = cfg.get("ota_key") or ()
        self.keys = [unhexlify(k) for k in ([keys] if isinstance(keys, str) else keys)]
        self.chunk = cfg.get("ota_chunk", 1024)
        self.idle_ms = cfg.get("ota_idle_s", 120) * 1000
        base = "trackside/v1/%s/%d/" % (cfg["train_id"], cfg["device_id"])
        self._reply, self._status = (base + "reply").encode(), (base + "status").encode()
        self.link = Link(cfg, "trackside-%d" % cfg["device_id"], self._status, (base + "cmd",))
        self.rid = None  # the accepted offer's id, its tag (the first 4 bytes of its digest),
        self.tag = self.files = self.version = None  # its files and version
        self.slot = "b" if state.get("slot") == "a" else "a"  # the inactive one
        self.done = 0  # files checked on flash
        self.bad = 0  # files that failed their check, this boot
        self.at = None  # (file, offset) asked for
        self._heard = time.ticks_ms()

    def run(self):
        """Fetch the offered release (or in safe mode wait for one) until the board resets."""
        link = self.link
        while 1:
            self.board.feed()
            if not self.safe and time.ticks_diff(time.ticks_ms(), self._heard) > self.idle_ms:
                self.leave("no chunk for %d s" % (self.idle_ms // 1000))
            try:
                if link.client is None:
                    if link.due() and self.board.net_up():
                        link.connect()
                        link.publish(self._status, '{"state":"%s","fails":%d,"app":"%s","slot":"%s"}'
                                     % ("safe" if self.safe else "updating", self.state.get("fails", 0),
                                        self.state.get("ver", ""), self.state.get("slot", "")), True)
                        self.resume()
                else:
                    link.poll()
                    while link.inbox:
                        self.received(link.inbox.pop(0)[1])
            except LINK_ERRORS as e:
                link.fail(e)
            time.sleep_ms(5)

    def resume(self):
        # After a connect: the offer on flash (checked again, as RAM was lost), or the request
        # that may have been lost with the connection.
        if self.rid is None:
            try:
                with open(OFFER, "rb") as f:
                    offer = f.read()
            except OSError:
                return
            self.received(offer)
        elif self.at is not None:
            self.ask()

    def received(self, payload):
        if payload[:1] == b"\x00":
            return self.write(payload)
        try:
            cmd = json.loads(payload)
            rid, op = cmd.get("id"), cmd.get("op")
        except (ValueError, AttributeError):
            return
        if op == "ota":
            if "m" not in cmd:  # the app got this short offer; the signed one comes when asked
                if rid != self.rid:
                    self.say(rid, 1, ',"ota":"ready"')
                elif self.at is not None:
                    self.ask()
            elif rid != self.rid:  # not the offer being fetched (the gateway offers again)
                with open(OFFER, "wb") as f:
                    f.write(payload)
                self.offer(cmd)
        elif op == "reboot":
            self.say(rid, 1, "")
            self.state["fails"] = 0  # out of safe mode: try the app again
            self.save()
            _rm("ota.try")
            self.link.client.disconnect()
            self.board.reboot()
        else:
            self.say(rid, 0, ',"error":"%s mode: only ota and reboot"'
                     % ("safe" if self.safe else "update"))

    def offer(self, cmd):
        rid = cmd.get("id")
        try:
            manifest = cmd["m"].encode()
            digest = sha256(manifest).digest()
            error = self.check(digest, unhexlify(cmd["sig"]), json.loads(manifest))
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            error = "malformed offer: %r" % e
        if error:
            print("ota: refused:", error)
            self.say(rid, 0, ',"ota":"refused","error":%s' % json.dumps(error))
            if not self.safe:
                self.leave(None)
            return
        m = json.loads(manifest)
        self.rid, self.tag, self.version = rid, digest[:4], m["version"]
        self.files, self.done = m["files"], 0
        path = self.slot + MANIFEST
        try:
            with open(path, "rb") as f:
                same = f.read() == manifest
        except OSError:
            same = False
        if not same:  # another release's files, or none: start this one afresh
            _wipe(self.slot)
            _mkdirs(path)
            with open(path, "wb") as f:
                f.write(manifest)
        print("ota: fetching %s into slot %s" % (self.version, self.slot))
        gc.collect()
        self.next()

    def check(self, digest, sig, m):
        """Why this release may not be installed here; None if it may."""
        if not self.keys:
            return "no ota_key in trackside.json"
        gc.collect()  # the offer's JSON: the check's big ints need the heap in few pieces
        import ed25519

        ok = 0
        for key in self.keys:
            ok = ok or ed25519.verify(key, digest, sig)
        del sys.modules["ed25519"]  # its code and tables: 4 KB of heap this client needs no more
        if not ok:
            return "signature: not signed by this fleet's release key"
        if self.kind not in m["boards"]:
            return "the release is for %s, this board is %s" % (", ".join(m["boards"]), self.kind)
        if sys.implementation.version[:3] < tuple(int(x) for x in m["micropython"].split(".")):
            return "the release needs MicroPython %s or later" % m["micropython"]
        st = os.statvfs("/" if sys.platform != "linux" else ".")
        need = sum(f[1] for f in m["files"])
        if need > st[0] * st[4]:
            return "the release needs %d bytes, %d are free" % (need, st[0] * st[4])
        return None

    def next(self):
        # The first file not yet on flash and checked, from where it stops.
        while self.done < len(self.files):
            name, size, digest = self.files[self.done]
            path = self.slot + "/" + name
            have = _size(path)
            if have < size:
                if have < 0:
                    _mkdirs(path)
                self.at = (self.done, max(have, 0))
                return self.ask()
            if have == size and _hash(path) == digest:
                self.done += 1
            else:  # longer, or not these bytes: fetched again, unless it keeps failing
                os.remove(path)
                self.bad += 1
                if self.bad > 3:
                    self.leave("%s failed its SHA-256 check %d times" % (name, self.bad))
                print("ota: %s failed its check, fetching it again" % name)
        self.switch()

    def ask(self):
        self.say(self.rid, 1, ',"ota":"get","f":%d,"o":%d,"n":%d' % (self.at + (self.chunk,)))

    def write(self, chunk):
        # A chunk: 0x00, the offer's tag (4 bytes), file index (1), offset (4, big-endian), data.
        at = self.at
        if at is None or chunk[1:5] != self.tag or (chunk[5], struct.unpack(">I", chunk[6:10])[0]) != at:
            return  # stale or repeated: the request stands
        self._heard = time.ticks_ms()
        name, size = self.files[at[0]][:2]
        with open(self.slot + "/" + name, "ab") as f:
            f.write(memoryview(chunk)[10:])
        off = at[1] + len(chunk) - 10
        if off < size:
            self.at = (at[0], off)
            return self.ask()
        self.next()

    def switch(self):
        s = self.state
        self.say(self.rid, 1, ',"ota":"switching","version":"%s","slot":"%s"' % (
            self.version, self.slot))
        # The offer goes first: with it gone and the state still old, a power loss boots the
        # old app (and a new offer finds these files complete); the other order would boot this
        # client again, which would take the slot just filled for the inactive one.
        os.remove(OFFER)
        s["good"], s["gver"] = s.get("slot", ""), s.get("ver", "")
        s["slot"], s["ver"], s["rid"] = self.slot, self.version, self.rid
        s["trial"], s["fails"] = 1, 0
        self.save()
        _rm("ota.try")  # this boot failed nothing: the next is the release's first
        print("ota: switching to %s in slot %s" % (self.version, self.slot))
        self.link.client.disconnect()
        self.board.reboot()

    def leave(self, why):
        """Give up this offer and boot the app again (which reports `why`, if any)."""
        _rm(OFFER)
        if why:
            print("ota: gave up:", why)
            self.state["report"] = {"id": self.rid, "ok": False, "ota": "abandoned", "why": why}
            self.save()
        if self.link.client is not None:
            self.link.client.disconnect()
        self.board.reboot()

    def say(self, rid, ok, rest):
        # A reply to the offer `rid`; `rest` is the rest of its JSON object.
        self.link.publish(self._reply, '{"id":%s,"ok":%s%s}' % (
            json.dumps(rid), "true" if ok else "false", rest))
