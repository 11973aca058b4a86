# Entry point on every board: read trackside.json, pick the board layer, run forever.
import gc
import json

BOARDS = {"unix": "board_unix", "esp32-devkitc": "board_esp32", "pico-w": "board_pico_w"}


def boot():
    """The board layer and the app, built from trackside.json."""
    with open("trackside.json") as f:
        cfg = json.load(f)
    # The outbox ring is the app's one large block (8.7 KB): taken first, while the heap is
    # one free stretch; after the imports it might only fit in fragments.
    import wire
    from outbox import Outbox

    outbox = Outbox(cfg.get("outbox", 256), wire.HEADER_SIZE + 2 * len(wire.CHANNELS))
    board = __import__(BOARDS[cfg["board"]]).Board(cfg)
    from app import App

    return board, App(cfg, board, outbox)


def main():
    board, app = boot()
    gc.collect()  # the parsed trackside.json and what loading the modules left behind
    try:
        app.run()
    except KeyboardInterrupt:  # Ctrl-C, e.g. from `trackside deploy` or `trackside console`
        if board.wdt is None:
            print("trackside: stopped; no watchdog armed, the board stays in the REPL")
        else:
            print("trackside: stopped, but the watchdog is armed and cannot be stopped: the board"
                  " resets within %d s; deploy right after that reset" % -(-board.wdt_ms // 1000))


main()
