# The simulated twin of the sensor drivers, fed by the train model; used by the unix board.
# It provides only the raw I/O (sensors.py converts), so the conversions are the real ones.
import math
import struct
import time

from sensors import ACCEL_SAMPLES, G_PER_COUNT, Sensors

DIVIDER = 11.0  # 100k/10k, as wired on the boards (hardware/wiring/)
M_PER_PULSE = 0.7226  # 920 mm wheel, 4 pulses per revolution


class SimSensors(Sensors):
    """The train model advanced in real time, one set of values per reading, as raw I/O."""

    def __init__(self, model):
        Sensors.__init__(self, DIVIDER, M_PER_PULSE)
        self._model = model
        self._values = None  # the model's values during one reading, then dropped (0.5 KB)
        self._metres = 0.0  # distance not yet turned into speed pulses
        self._i = 0  # accelerometer sample index
        self._at = time.ticks_ms()  # model time

    def read(self, enable):
        now = time.ticks_ms()
        dt = time.ticks_diff(now, self._at) / 1000
        self._at = now
        model = self._model
        model.step(dt)
        self._values = model.values()
        self._metres += model.speed * dt / 3.6
        out = Sensors.read(self, enable)
        self._values = None
        return out

    def _probe(self, name):
        v = self._values.get(name)
        return None if v is None else int(v * 16) & 0xFFFF

    def _start(self):
        pass

    def _accel(self, buf):
        # Gravity on z plus a 3-cycle sine on x whose RMS is the model's vibration.
        v = self._values.get("vibration_rms")
        if v is None:
            raise OSError(5)  # a dropped-out accelerometer stops answering on I2C (EIO)
        self._i = (self._i + 1) % ACCEL_SAMPLES
        x = int(v * 1.41421356 / G_PER_COUNT * math.sin(6.2831853 * 3 * self._i / ACCEL_SAMPLES))
        struct.pack_into("<hhh", buf, 0, x, 0, 256)

    def _supply_uv(self):
        return int(self._values["supply_voltage"] * 1000000 / DIVIDER)

    def _pulses(self):
        n = int(self._metres / M_PER_PULSE)
        self._metres -= n * M_PER_PULSE
        return n
