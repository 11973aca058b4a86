# Raspberry Pi Pico W: Wi-Fi board layer; the RP2040 watchdog allows at most 8388 ms.
from board_wifi import WifiBoard


class Board(WifiBoard):
    wdt_max_ms = 8388
