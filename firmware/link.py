# The MQTT session on top of micropython-lib's umqtt.simple: connect with a retained last will,
# subscribe, reconnect with jittered exponential backoff, keepalive pings (umqtt never pings on
# its own), and socket timeouts so that a dead broker raises OSError instead of hanging.
import random
import time

from umqtt.simple import MQTTClient

OFFLINE = b'{"state":"offline"}'


class Link:
    def __init__(self, cfg, client_id, will_topic, topics):
        b = cfg["broker"]
        self._args = (client_id, b["host"], b.get("port", 1883), b.get("user") or None,
                      b.get("password") or None)
        self._tls = b.get("tls", False)
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

    def connect(self):
        c = MQTTClient(*self._args, keepalive=self.keepalive_s, ssl=self._tls)
        c.set_last_will(self._will, OFFLINE, retain=True, qos=1)
        c.set_callback(self._received)
        self.client = c  # so that fail() closes the socket if connect raises
        c.connect()
        c.sock.settimeout(self._timeout_s)
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
        # Full jitter over an exponentially growing window, never below the minimum.
        window = min(self._backoff_max, self._backoff_min << min(self._failures, 16))
        delay = self._backoff_min + random.getrandbits(24) % max(1, window - self._backoff_min)
        self._failures += 1
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
        c.sock.settimeout(self._timeout_s)
        if time.ticks_diff(time.ticks_ms(), self._last_tx) > self.keepalive_s * 500:
            c.ping()
            self._last_tx = time.ticks_ms()

    def _received(self, topic, msg):
        self.inbox.append((topic, msg))
