# Boards with Wi-Fi (ESP32, Pico W): pins from board.json (hardware/wiring/), Wi-Fi station,
# NTP time sync, the drivers of the real sensor chips, status LED.
import json
import time

import network
from machine import ADC, Pin, SoftI2C

from board import Board
from sensors import Sensors


class WiredSensors(Sensors):
    """The raw I/O of the chips: 1-Wire probes (DS18B20 ambient, MAX31850K thermocouple
    converters for engine and bearings: the same convert/read-scratchpad commands), an ADXL345
    accelerometer on I2C, the supply through a divider into an ADC, and axle pulses counted by
    interrupt."""

    def __init__(self, pins):
        ow, i2c, adc, pulse = pins["onewire"], pins["i2c"], pins["supply_adc"], pins["speed_pulse"]
        Sensors.__init__(self, adc["divider"], pulse["wheel_m"] / pulse["pulses_per_rev"])
        import onewire

        self._ow = onewire.OneWire(Pin(ow["pin"]))
        # Probes are labelled in ROM order when fitted.
        self._roms = list(zip(ow["probes"], sorted(self._ow.scan())))
        self._scratch = bytearray(9)
        # SoftI2C: any two pins on either board, and 400 kHz is plenty for one accelerometer.
        self._i2c = SoftI2C(sda=Pin(i2c["sda"]), scl=Pin(i2c["scl"]), freq=i2c["freq"])
        self._addr = i2c["accel_addr"]
        self._i2c.writeto_mem(self._addr, 0x2C, b"\x0d")  # BW_RATE: 800 Hz
        self._i2c.writeto_mem(self._addr, 0x31, b"\x0b")  # DATA_FORMAT: full resolution, +-16 g
        self._i2c.writeto_mem(self._addr, 0x2D, b"\x08")  # POWER_CTL: measure
        self._adc = ADC(Pin(adc["pin"]))
        self._count = 0
        Pin(pulse["pin"], Pin.IN).irq(self._pulse, Pin.IRQ_RISING)
        self._start()

    def _start(self):
        self._ow.reset()
        self._ow.writebyte(0xCC)  # skip ROM: every probe converts at once
        self._ow.writebyte(0x44)

    def _probe(self, name):
        for n, rom in self._roms:
            if n == name:
                self._ow.reset()
                self._ow.select_rom(rom)
                self._ow.writebyte(0xBE)
                self._ow.readinto(self._scratch)
                if self._ow.crc8(self._scratch):
                    return None
                return (self._scratch[1] << 8 | self._scratch[0]) & ~3  # MAX31850 fault bits
        return None

    def _accel(self, buf):
        self._i2c.readfrom_mem_into(self._addr, 0x32, buf)

    def _supply_uv(self):
        if hasattr(self._adc, "read_uv"):
            return self._adc.read_uv()
        return self._adc.read_u16() * 3300000 // 65535

    def _pulse(self, _pin):
        self._count += 1

    def _pulses(self):
        n, self._count = self._count, 0
        return n


class WifiBoard(Board):
    def __init__(self, cfg):
        Board.__init__(self, cfg)
        with open("board.json") as f:
            pins = json.load(f)["pins"]
        self.sensors = WiredSensors(pins)
        self._led = Pin(pins["status_led"]["pin"], Pin.OUT)
        self._wlan = network.WLAN(network.STA_IF)
        self._wlan.active(True)
        self._synced = False
        self._wifi = cfg["wifi"]

    def net_up(self):
        if self._wlan.isconnected():
            return True
        if self._wlan.status() != network.STAT_CONNECTING:
            self._wlan.connect(self._wifi["ssid"], self._wifi["password"])
        return False

    def rssi(self):
        try:
            return self._wlan.status("rssi")
        except (OSError, ValueError):  # not associated, or a port without the query
            return None

    def sync_time(self):
        if not self._synced and self._wlan.isconnected():
            try:
                import ntptime

                ntptime.settime()
                self._synced = True
            except (OSError, OverflowError):
                print("ntp: no time yet, timestamps are since boot")
        return self._synced

    def identify(self):
        for i in range(20):
            self._led.value(i & 1)
            self.feed()
            time.sleep_ms(150)
