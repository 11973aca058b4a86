# Sensor drivers. Each driver keeps its raw I/O in one small method (`_raw`, `_sample`, `_take`)
# and its conversion to the channel's unit in shared code; the simulated twins in sim.py
# override only the raw I/O, so the unix port runs the very conversions the boards run.
import math
import time

ACCEL_SAMPLES = 32  # per vibration reading; 32 x 6 bytes read into one reused buffer


def vibration_rms(sum_sq_dev, n):
    """RMS of the dynamic acceleration (gravity removed) from summed squared deviations."""
    return math.sqrt(sum_sq_dev / n) if n else 0.0


class Probes:
    """1-Wire temperature probes on one bus: DS18B20 (ambient) and MAX31850K thermocouple
    converters (engine, bearings) answer the same convert/read-scratchpad commands."""

    def __init__(self, pin, names):
        import onewire
        from machine import Pin

        self._bus = onewire.OneWire(Pin(pin))
        roms = sorted(self._bus.scan())
        self._roms = list(zip(names, roms))  # probes are labelled in ROM order when fitted
        self._buf = bytearray(9)
        self._start()

    def _start(self):
        # Conversion takes up to 750 ms: start it now, read it at the next sample.
        self._bus.reset()
        self._bus.writebyte(0xCC)  # skip ROM: every probe converts at once
        self._bus.writebyte(0x44)

    def _raw(self, name):
        for n, rom in self._roms:
            if n == name:
                self._bus.reset()
                self._bus.select_rom(rom)
                self._bus.writebyte(0xBE)
                self._bus.readinto(self._buf)
                if self._bus.crc8(self._buf):
                    return None
                return (self._buf[1] << 8 | self._buf[0]) & ~3  # MAX31850 fault bits off
        return None

    def read(self, names):
        """Temperatures in degC (None for a missing or failing probe); starts the next round."""
        out = {}
        for name in names:
            raw = self._raw(name)
            if raw is not None and raw & 0x8000:
                raw -= 0x10000
            out[name] = None if raw is None else raw / 16.0
        self._start()
        return out


class Accelerometer:
    """ADXL345 on I2C, full resolution (3.9 mg per count), 800 Hz output rate."""

    SCALE_G = 0.0039

    def __init__(self, i2c, addr=0x53):
        self._i2c = i2c
        self._addr = addr
        self._buf = bytearray(6)
        i2c.writeto_mem(addr, 0x2C, b"\x0d")  # BW_RATE: 800 Hz
        i2c.writeto_mem(addr, 0x31, b"\x0b")  # DATA_FORMAT: full resolution, +-16 g
        i2c.writeto_mem(addr, 0x2D, b"\x08")  # POWER_CTL: measure

    def _sample(self):
        self._i2c.readfrom_mem_into(self._addr, 0x32, self._buf)
        b = self._buf
        return (_s16(b[1] << 8 | b[0]), _s16(b[3] << 8 | b[2]), _s16(b[5] << 8 | b[4]))

    def read(self):
        """Vibration RMS in g over ACCEL_SAMPLES samples, all three axes, gravity removed."""
        sx = sy = sz = sq = 0
        for _ in range(ACCEL_SAMPLES):
            x, y, z = self._sample()
            sx += x
            sy += y
            sz += z
            sq += x * x + y * y + z * z
        n = ACCEL_SAMPLES
        dev = sq - (sx * sx + sy * sy + sz * sz) / n  # sum of squared deviations, integers
        return vibration_rms(dev, n) * self.SCALE_G


def _s16(v):
    return v - 0x10000 if v & 0x8000 else v


class SupplyAdc:
    """Battery voltage through a resistor divider into an ADC pin."""

    def __init__(self, pin, divider):
        from machine import ADC, Pin

        self._adc = ADC(Pin(pin))
        self._divider = divider

    def _raw(self):
        return self._adc.read_uv() if hasattr(self._adc, "read_uv") else (
            self._adc.read_u16() * 3300000 // 65535)

    def read(self):
        """Supply voltage in V."""
        return self._raw() * self._divider / 1000000


class PulseSpeed:
    """Speed from an axle pulse generator: pulses counted by interrupt between readings."""

    def __init__(self, pin, pulses_per_rev, wheel_m):
        from machine import Pin

        self._count = 0
        self._m_per_pulse = wheel_m / pulses_per_rev
        self._last = time.ticks_ms()
        Pin(pin, Pin.IN).irq(self._pulse, Pin.IRQ_RISING)

    def _pulse(self, _pin):
        self._count += 1

    def _take(self):
        n, self._count = self._count, 0
        return n

    def read(self):
        """Speed in km/h averaged since the previous reading."""
        now = time.ticks_ms()
        dt = time.ticks_diff(now, self._last)
        self._last = now
        pulses = self._take()
        return pulses * self._m_per_pulse * 3600.0 / dt if dt > 0 else 0.0


class Sensors:
    """Every channel of one device, read in one go."""

    TEMPS = ("engine_temp", "bearing_left_temp", "bearing_right_temp", "ambient_temp")

    def __init__(self, probes, accel, supply, speed):
        self._probes = probes
        self._accel = accel
        self._supply = supply
        self._speed = speed

    def read(self, enabled):
        """Values of the enabled channels in their units; None where a sensor failed."""
        out = self._probes.read([n for n in self.TEMPS if enabled(n)])
        for name, sensor in (("vibration_rms", self._accel), ("speed", self._speed),
                             ("supply_voltage", self._supply)):
            if enabled(name):
                try:
                    out[name] = sensor.read()
                except OSError:  # a loose I2C connector must not stop the device
                    out[name] = None
        return out
