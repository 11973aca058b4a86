# The MQTT session on top of micropython-lib's umqtt.simple: connect with a retained last will,
# subscribe, reconnect with jittered exponential backoff, keepalive pings (umqtt never pings on
# its own), socket timeouts so that a dead broker raises OSError instead of hanging, and with
# TLS on, the gateway checked against its CA (ca.der) and its host name.
import random
import struct
import time

from umqtt.simple import MQTTClient, MQTTException

OFFLINE = b'{"state":"offline"}'
# umqtt.simple reports a broken connection as any of these.
LINK_ERRORS = (OSError, MQTTException, IndexError, AssertionError)


# umqtt.simple 1.3.4 writes a PUBLISH in five pieces, and Nagle's algorithm holds all but the
# first back until the broker's delayed ACK: 44 ms a QoS 1 publish on Linux, 23 readings/s
# draining an outbox (docs/firmware.md). This publish makes the same packet and sends it in
# one write, so it leaves at once, and as one record under TLS (where TCP_NODELAY is no help:
# umqtt wraps the socket inside connect()). Its packet id wraps from 65535 to 1; umqtt's would
# become 0, which MQTT forbids. QoS 1 only, as the app publishes; the topic is bytes.
def _publish(self, topic, msg, retain=False, qos=1):
    if isinstance(msg, str):
        msg = msg.encode()  # its length in bytes: a command id may be any UTF-8 text
    n = len(topic)
    sz = 4 + n + len(msg)  # topic length, topic, packet id, payload
    pkt = bytearray(4 + sz)  # the fixed header takes at most 4 bytes
    pkt[0] = 0x32 | retain
    i = 1
    while sz > 0x7F:
        pkt[i] = sz & 0x7F | 0x80
        sz >>= 7
        i += 1
    pkt[i] = sz
    self.pid = pid = self.pid % 0xFFFF + 1
    struct.pack_into("!H", pkt, i + 1, n)
    i += 3 + n
    pkt[i - n:i] = topic
    struct.pack_into("!H", pkt, i, pid)
    pkt[i + 2:i + 2 + len(msg)] = msg
    self.sock.write(pkt, i + 2 + len(msg))
    while 1:  # the PUBACK, as umqtt waits for it (other packets are handled on the way)
        if self.wait_msg() == 0x40 and self.sock.read(3) == struct.pack("!BH", 2, pid):
            return


# Replaced rather than overridden in a subclass: umqtt's own publish is then garbage, 0.5 KB
# less heap on the unix port.
MQTTClient.publish = _publish


class Link:
    def __init__(self, cfg, client_id, will_topic, topics):
        b = cfg["broker"]
        # Port 0 is umqtt's default: 8883 with TLS, 1883 without.
        self._args = (client_id, b["host"], b.get("port", 0), b.get("user") or None,
                      b.get("password") or None)
        self._tls = ctx = b.get("tls")
        # umqtt.simple 1.3.4 wraps its socket with `ussl.wrap_socket(sock, **ssl_params)`, and
        # MicroPython has no `ussl` module any more: with TLS on, this Link stands in for it
        # (wrap_socket below), with a context that checks the gateway against its CA. Built here,
        # inline (a method of its own took 96 bytes more heap), and only with TLS on: 3.1 KB of
        # heap on the 64-bit unix port, 0.7 KB more while connected. From `tls`, the built-in
        # module (MicroPython 1.23 and later) under the `ssl` wrapper, which takes 1 KB more.
        # The CA is DER: the unix port's mbedTLS parses no PEM, and DER is a third smaller.
        if ctx:
            import sys
            import tls

            self._tls = ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
            with open("ca.der", "rb") as f:  # the gateway's CA, from `trackside deploy --tls`
                ctx.load_verify_locations(f.read())
            ctx.verify_mode = tls.CERT_REQUIRED
            sys.modules["ussl"] = self
        self._said = 0  # the gateway's certificate failed the check, and that was printed
        self._sock = None  # the TCP socket, under TLS too
        self._will = will_topic
        self._topics = topics
        self.keepalive_s = cfg.get("keepalive_s", 30)
        self._timeout_s = cfg.get("timeout_s", 5)
        self._backoff_min, self._backoff_max = cfg.get("backoff_ms", (1000, 30000))
        self._failures = 0
        self._retry_at = time.ticks_ms()
        self._last_tx = 0
        self.client = None
        self.inbox = []  # (topic, payload) received; handled outside umqtt's read loop

    def due(self):
        return self.client is None and time.ticks_diff(time.ticks_ms(), self._retry_at) >= 0

    def wrap_socket(self, sock):
        """umqtt's `ussl.wrap_socket`, with TLS on: the gateway's certificate checked against
        the CA and the broker's host name."""
        self._sock = sock  # an SSLSocket has no settimeout(): the timeouts go to the TCP socket
        try:
            return self._tls.wrap_socket(sock, server_hostname=self._args[1])
        except ValueError as e:  # mbedTLS: the gateway's certificate did not pass the check
            if not self._said:
                print("tls: refused the gateway's certificate:", str(e).strip())
            self._said = 1
            raise OSError("tls")  # retried as any failure: the gateway may get a good one

    def connect(self):
        c = MQTTClient(*self._args, keepalive=self.keepalive_s, ssl=self._tls)
        c.set_last_will(self._will, OFFLINE, retain=True, qos=1)
        c.set_callback(self._received)
        self.client = c  # so that fail() closes the socket if connect raises
        c.connect()
        self._said = 0
        if not self._tls:
            self._sock = c.sock
        self._sock.settimeout(self._timeout_s)
        for t in self._topics:
            c.subscribe(t, 1)
        self._failures = 0
        self._last_tx = time.ticks_ms()

    def fail(self, exc):
        c, self.client = self.client, None
        if c is not None and c.sock is not None:
            try:
                c.sock.close()
            except OSError:
                pass
        # Full jitter from the minimum up to a window that doubles with each failure in a row up
        # to the cap: 1-2 s, 1-4 s, ... 1-30 s by default. Devices cut off together by a broker
        # restart spread even their first retries over a second instead of all coming at once.
        self._failures += 1
        low = self._backoff_min
        window = min(self._backoff_max, low << min(self._failures, 16))
        delay = low + random.getrandbits(24) % max(1, window - low + 1)
        self._retry_at = time.ticks_add(time.ticks_ms(), delay)
        print("mqtt: %r, retry in %d ms" % (exc, delay))

    def publish(self, topic, payload, retain=False):
        self.client.publish(topic, payload, retain, 1)  # returns after the PUBACK
        self._last_tx = time.ticks_ms()

    def poll(self):
        c = self.client
        for _ in range(8):  # a few messages per call, so that sampling keeps its pace
            n = len(self.inbox)
            if c.check_msg() is None and len(self.inbox) == n:
                break
        # check_msg() leaves the socket blocking without a timeout: restore it.
        self._sock.settimeout(self._timeout_s)
        if time.ticks_diff(time.ticks_ms(), self._last_tx) > self.keepalive_s * 500:
            c.ping()
            self._last_tx = time.ticks_ms()

    def _received(self, topic, msg):
        self.inbox.append((topic, msg))
