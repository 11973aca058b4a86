# Boards with Wi-Fi (ESP32, Pico W): pins from board.json (hardware/wiring/), Wi-Fi station,
# NTP time sync, real sensor drivers, status LED.
import json
import time

import network

from board import Board
from sensors import Accelerometer, Probes, PulseSpeed, Sensors, SupplyAdc


class WifiBoard(Board):
    def __init__(self, cfg):
        Board.__init__(self, cfg)
        from machine import Pin, SoftI2C

        with open("board.json") as f:
            w = json.load(f)["pins"]
        ow, i2c, adc, pulse = w["onewire"], w["i2c"], w["supply_adc"], w["speed_pulse"]
        # SoftI2C: any two pins on either board, and 400 kHz is plenty for one accelerometer.
        bus = SoftI2C(sda=Pin(i2c["sda"]), scl=Pin(i2c["scl"]), freq=i2c["freq"])
        self.sensors = Sensors(
            Probes(ow["pin"], ow["probes"]),
            Accelerometer(bus, i2c["accel_addr"]),
            SupplyAdc(adc["pin"], adc["divider"]),
            PulseSpeed(pulse["pin"], pulse["pulses_per_rev"], pulse["wheel_m"]),
        )
        self._led = Pin(w["status_led"]["pin"], Pin.OUT)
        self._wlan = network.WLAN(network.STA_IF)
        self._wlan.active(True)
        self._synced = False

    def net_up(self):
        if self._wlan.isconnected():
            return True
        if self._wlan.status() != network.STAT_CONNECTING:
            wifi = self.cfg["wifi"]
            self._wlan.connect(wifi["ssid"], wifi["password"])
        return False

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

