# Sensor channels: what each sensor's raw reading means in its channel's unit, and the reading
# of every enabled channel. The raw I/O comes from a subclass: the drivers of the real chips
# (board_wifi.py) or their simulated twins (sim.py). So the unix port runs the very conversions
# the boards run, and loads no driver code it cannot use (a saving of a few KB of heap).
import math
import struct
import time

ACCEL_SAMPLES = 32  # per vibration reading, read into one reused 6-byte buffer
G_PER_COUNT = 0.0039  # ADXL345 at full resolution
TEMPS = ("engine_temp", "bearing_left_temp", "bearing_right_temp", "ambient_temp")


class Sensors:
    """Every channel of one device, read in one go. A subclass provides the raw I/O:
    `_probe(name)` (1-Wire temperature word or None), `_start()` (next conversion),
    `_accel(buf)` (ADXL345 DATAX0..DATAZ1 into buf), `_supply_uv()`, `_pulses()`."""

    def __init__(self, divider, m_per_pulse):
        self._divider = divider  # supply voltage divider ratio
        self._m_per_pulse = m_per_pulse  # wheel circumference / pulses per revolution
        self._xyz = bytearray(6)
        self._last = time.ticks_ms()  # of the previous speed reading

    def read(self, enable):
        """Values of the channels not disabled in `enable` (name -> bool) in their units;
        None where a sensor failed."""
        out = {}
        for name in TEMPS:
            if enable.get(name, True):
                raw = self._probe(name)  # 1/16 degC, two's complement
                if raw is not None and raw & 0x8000:
                    raw -= 0x10000
                out[name] = None if raw is None else raw / 16
        self._start()  # conversion takes up to 750 ms: start it now, read it next time
        self._channel(out, enable, "vibration_rms", self._vibration)
        self._channel(out, enable, "speed", self._speed)
        self._channel(out, enable, "supply_voltage", self._supply)
        return out

    def _channel(self, out, enable, name, read):
        if enable.get(name, True):
            try:
                out[name] = read()
            except OSError:  # a loose I2C connector must not stop the device
                out[name] = None

    def _vibration(self):
        # RMS in g over ACCEL_SAMPLES samples, all three axes, gravity removed: from the sums
        # of the samples and of their squares, so that no sample is kept.
        b = self._xyz
        sx = sy = sz = sq = 0
        for _ in range(ACCEL_SAMPLES):
            self._accel(b)
            x, y, z = struct.unpack_from("<hhh", b)
            sx += x
            sy += y
            sz += z
            sq += x * x + y * y + z * z
        dev = sq - (sx * sx + sy * sy + sz * sz) / ACCEL_SAMPLES  # sum of squared deviations
        return math.sqrt(max(0.0, dev) / ACCEL_SAMPLES) * G_PER_COUNT  # rounding: never < 0

    def _speed(self):
        # km/h averaged since the previous reading.
        now = time.ticks_ms()
        dt = time.ticks_diff(now, self._last)
        self._last = now
        pulses = self._pulses()
        return pulses * self._m_per_pulse * 3600 / dt if dt > 0 else 0.0

    def _supply(self):
        return self._supply_uv() * self._divider / 1000000
