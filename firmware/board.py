# What every board layer offers the app; the unix port has no watchdog and no reset, so those
# degrade to nothing and to leaving the process (its supervisor starts it again).
import time

from micropython import const

# The watchdog waits this long after boot before it is armed: on ESP32 and RP2040 an armed
# machine.WDT cannot be stopped, and `trackside deploy` stops main.py with Ctrl-C and then
# copies files for several seconds, so deploying right after a reset must never be cut short.
WATCHDOG_GRACE_MS = const(30000)


class Board:
    wdt_max_ms = 8000

    def __init__(self, cfg):
        # Only what is needed later is kept, so that the parsed trackside.json can go.
        self._name = "device %d of train %s" % (cfg["device_id"], cfg["train_id"])
        self.sensors = None
        self.wdt = None  # the armed machine.WDT
        # "watchdog": false in trackside.json keeps it off (bench work); on by default.
        self.wdt_ms = min(cfg.get("keepalive_s", 30) * 1000, self.wdt_max_ms)
        self._wdt_at = time.ticks_add(time.ticks_ms(), WATCHDOG_GRACE_MS)
        self._wdt_wanted = cfg.get("watchdog", True)

    def feed(self):
        """Feed the watchdog; arm it once the grace period after boot is over."""
        if self.wdt is not None:
            self.wdt.feed()
        elif self._wdt_wanted and time.ticks_diff(time.ticks_ms(), self._wdt_at) >= 0:
            self._wdt_wanted = False  # decided once: armed now, or no watchdog on this port
            try:
                from machine import WDT
            except ImportError:
                return
            self.wdt = WDT(timeout=self.wdt_ms)

    def reboot(self):
        import machine

        if hasattr(machine, "reset"):
            machine.reset()
        raise SystemExit("reboot")

    def net_up(self):
        return True

    def rssi(self):
        """The radio's signal strength in dBm, or None without a radio."""
        return None

    def sync_time(self):
        """True when the clock is wall-clock UTC."""
        return True

    def identify(self):
        print("identify: " + self._name)
