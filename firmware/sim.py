# Simulated twins of the sensor drivers, fed by the train model; used by the unix board.
# Each twin overrides only the raw I/O of its driver, so the conversions are the real ones.
import math
import time

from sensors import ACCEL_SAMPLES, Accelerometer, Probes, PulseSpeed, Sensors, SupplyAdc

DIVIDER = 11.0  # 100k/10k, as wired on the boards (hardware/wiring/)
M_PER_PULSE = 0.7226  # 920 mm wheel, 4 pulses per revolution


class World:
    """The train model advanced in real time; one set of values per reading."""

    def __init__(self, model):
        self.model = model
        self.values = model.values()
        self.metres = 0.0  # distance not yet turned into speed pulses
        self._last = time.ticks_ms()

    def advance(self):
        now = time.ticks_ms()
        dt = time.ticks_diff(now, self._last) / 1000
        self._last = now
        self.model.step(dt)
        self.values = self.model.values()
        self.metres += self.model.speed * dt / 3.6


class SimProbes(Probes):
    def __init__(self, world):
        self._world = world

    def _start(self):
        pass

    def _raw(self, name):
        v = self._world.values.get(name)
        return None if v is None else int(v * 16) & 0xFFFF  # 1/16 degC, two's complement


class SimAccelerometer(Accelerometer):
    def __init__(self, world):
        self._world = world
        self._i = 0

    def _sample(self):
        # Gravity on z plus a 3-cycle sine on x whose RMS is the model's vibration.
        v = self._world.values.get("vibration_rms")
        amplitude = 0 if v is None else v * 1.41421356 / self.SCALE_G
        self._i = (self._i + 1) % ACCEL_SAMPLES
        x = int(amplitude * math.sin(6.2831853 * 3 * self._i / ACCEL_SAMPLES))
        return (x, 0, 256)


class SimSupply(SupplyAdc):
    def __init__(self, world):
        self._world = world
        self._divider = DIVIDER

    def _raw(self):
        return int(self._world.values["supply_voltage"] * 1000000 / DIVIDER)


class SimSpeed(PulseSpeed):
    def __init__(self, world):
        self._world = world
        self._m_per_pulse = M_PER_PULSE
        self._last = time.ticks_ms()

    def _take(self):
        n = int(self._world.metres / M_PER_PULSE)
        self._world.metres -= n * M_PER_PULSE
        return n


class SimSensors(Sensors):
    def __init__(self, model):
        self._world = World(model)
        w = self._world
        Sensors.__init__(self, SimProbes(w), SimAccelerometer(w), SimSupply(w), SimSpeed(w))

    def read(self, enabled):
        self._world.advance()
        return Sensors.read(self, enabled)
