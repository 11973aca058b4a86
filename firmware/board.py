# What every board layer offers the app; the unix port has no watchdog and no reset, so those
# degrade to nothing and to leaving the process (its supervisor starts it again).


class Board:
    wdt_max_ms = 8000

    def __init__(self, cfg):
        self.cfg = cfg
        self.sensors = None
        self._wdt = None

    def start_watchdog(self, timeout_ms):
        try:
            from machine import WDT
        except ImportError:
            return
        self._wdt = WDT(timeout=min(timeout_ms, self.wdt_max_ms))

    def feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    def reboot(self):
        import machine

        if hasattr(machine, "reset"):
            machine.reset()
        raise SystemExit("reboot")

    def net_up(self):
        return True

    def sync_time(self):
        """True when the clock is wall-clock UTC."""
        return True

    def identify(self):
        print("identify: device %d of train %s" % (self.cfg["device_id"], self.cfg["train_id"]))
