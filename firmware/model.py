# Physically plausible sensor model of one train: drive cycle, engine, axle bearings, vibration,
# train battery, ambient air. Runs unchanged on CPython (the fast simulator steps thousands of
# these per second) and on MicroPython (the unix board's simulated sensors), so: no annotations,
# only `math`, and a private PRNG so that one seed gives the same train on both interpreters.
# Integer literals where a float would do: on the 64-bit unix port every float constant is a
# heap object, an integer is not (the results are the same to the bit).
# Units are the wire format's: degC, g, km/h, V. Documented in docs/firmware.md.
import math

try:
    from micropython import const
except ImportError:  # CPython: the fast simulator

    def const(x):
        return x


FAULTS = (
    "bearing_overheat_gradual",
    "bearing_overheat_sudden",
    "coolant_loss",
    "vibration_growth",
    "sensor_dropout",
)
# Indices into FAULTS: the model compares numbers, so each fault name is one string object.
_GRADUAL = const(0)
_SUDDEN = const(1)
_COOLANT = const(2)
_VIBRATION = const(3)
_DROPOUT = const(4)
_DROPOUT_CHOICES = ("bearing_left_temp", "bearing_right_temp", "engine_temp", "vibration_rms")

# Drive cycle phases.
_STOP = const(0)
_ACCEL = const(1)
_CRUISE = const(2)
_BRAKE = const(3)
_ACCEL_KMH_S = const(2)  # about 0.55 m/s^2, a loaded regional train
_BRAKE_KMH_S = const(3)  # about 0.85 m/s^2, service braking
_ENGINE_HOT = const(88)  # thermostat-held coolant temperature, degC
_ENGINE_TAU_S = const(300)  # warm-up time constant
_BEARING_TAU_S = const(240)
_MASK32 = const(0xFFFFFFFF)


class TrainModel:
    """One train's sensors; `step(dt_s)` advances time, `values()` reads every channel."""

    def __init__(self, seed, fault=None, fault_start_s=0.0):
        if fault is not None and fault not in FAULTS:
            raise ValueError("unknown fault %r, expected one of %s" % (fault, ", ".join(FAULTS)))
        self._rng = (seed * 2654435761 + 12345) & _MASK32 or 1
        self.fault = fault
        self._fault = -1 if fault is None else FAULTS.index(fault)
        self.fault_start_s = fault_start_s
        self.t = 0.0
        self._ambient0 = 5 + 20 * self._uniform()
        self.ambient = self._ambient0
        self.engine = self.ambient
        self._left_offset = 15 + 3 * self._uniform()
        self._right_offset = 15 + 3 * self._uniform()
        self.bearing_left = self.ambient + self._left_offset
        self.bearing_right = self.ambient + self._right_offset
        self.speed = 0.0
        self._phase = _STOP
        self._phase_left = 10 + 30 * self._uniform()  # seconds left in a timed phase
        self._cruise = 0.0
        self._dropout = _DROPOUT_CHOICES[self._next() % len(_DROPOUT_CHOICES)]
        self._extra_left = 0.0  # fault heat on the left bearing, degC
        self._vibration_factor = 1.0

    def _next(self):
        # xorshift32: a few integer operations, identical on both interpreters.
        x = self._rng
        x ^= (x << 13) & _MASK32
        x ^= x >> 17
        x ^= (x << 5) & _MASK32
        self._rng = x
        return x

    def _uniform(self):
        return self._next() / 4294967296

    def _noise(self, amplitude):
        return (self._uniform() - 0.5) * 2 * amplitude

    def step(self, dt_s):
        """Advance the model by dt_s seconds (any step size; large steps stay stable)."""
        self.t += dt_s
        self._drive(dt_s)
        load = self.speed / 160
        self.ambient = self._ambient0 + 1.5 * math.sin(self.t / 3600)
        self._fault_effects()
        engine_target = _ENGINE_HOT + (2 * load if self._phase == _ACCEL else 0)
        if self._fault == _COOLANT and self.t >= self.fault_start_s:
            # Less coolant, less heat carried away: the equilibrium climbs 15 degC a minute.
            engine_target += min(80, 0.25 * (self.t - self.fault_start_s))
        a = dt_s / (_ENGINE_TAU_S + dt_s)
        self.engine += (engine_target - self.engine) * a
        a = dt_s / (_BEARING_TAU_S + dt_s)
        frictional = 20 * load  # bearings warm with speed: ambient + 15..35 degC
        self.bearing_left += (self.ambient + self._left_offset + frictional - self.bearing_left) * a
        self.bearing_right += (
            self.ambient + self._right_offset + frictional - self.bearing_right
        ) * a

    def _drive(self, dt_s):
        if self._phase == _STOP:
            self._phase_left -= dt_s
            if self._phase_left <= 0:
                self._phase = _ACCEL
                self._cruise = 80 + 80 * self._uniform()
        elif self._phase == _ACCEL:
            self.speed += _ACCEL_KMH_S * dt_s
            if self.speed >= self._cruise:
                self.speed = self._cruise
                self._phase = _CRUISE
                self._phase_left = 120 + 480 * self._uniform()
        elif self._phase == _CRUISE:
            self._phase_left -= dt_s
            self.speed = max(0.0, self._cruise + self._noise(1.5))
            if self._phase_left <= 0:
                self._phase = _BRAKE
        else:
            self.speed -= _BRAKE_KMH_S * dt_s
            if self.speed <= 0.0:
                self.speed = 0.0
                self._phase = _STOP
                self._phase_left = 30 + 60 * self._uniform()  # station dwell

    def _fault_effects(self):
        if self._fault < 0 or self.t < self.fault_start_s:
            return
        elapsed = self.t - self.fault_start_s
        if self._fault == _GRADUAL:
            self._extra_left = min(200, elapsed / 30)  # 2 degC per minute
        elif self._fault == _SUDDEN:
            self._extra_left = min(150, 40 * elapsed)  # seized within seconds
        elif self._fault == _VIBRATION:
            self._vibration_factor = min(10, 1 + elapsed / 120)

    def values(self):
        """Every channel's current value in its unit; None for a sensor that dropped out."""
        vibration = (0.08 + 0.0028 * self.speed + self._noise(0.015)) * self._vibration_factor
        supply = 24.4 + self._noise(0.08) - (0.5 if self._phase == _ACCEL else 0.0)
        v = {
            "engine_temp": self.engine + self._noise(0.2),
            "bearing_left_temp": self.bearing_left + self._extra_left + self._noise(0.2),
            "bearing_right_temp": self.bearing_right + self._noise(0.2),
            "vibration_rms": max(0.0, vibration),
            "speed": self.speed,
            "supply_voltage": supply,
            "ambient_temp": self.ambient + self._noise(0.1),
        }
        if self._fault == _DROPOUT and self.t >= self.fault_start_s:
            v[self._dropout] = None
        return v
