# Entry point on every board: read trackside.json, pick the board layer, run forever.
import json

BOARDS = {"unix": "board_unix", "esp32-devkitc": "board_esp32", "pico-w": "board_pico_w"}


def main():
    with open("trackside.json") as f:
        cfg = json.load(f)
    board = __import__(BOARDS[cfg["board"]]).Board(cfg)
    from app import App

    App(cfg, board).run()


main()
