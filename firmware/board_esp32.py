# ESP32 DevKitC: Wi-Fi board layer; the watchdog may run long.
from board_wifi import WifiBoard


class Board(WifiBoard):
    wdt_max_ms = 30000
