# Entry point on every board: slots.py chooses what runs from which slot (docs/ota.md), then
# it runs forever. Over-the-air updates replace neither file.
import gc
import sys

import slots

keep, board = True, None  # slots.py stays while it may have to roll back what fails
try:
    board, app, outbox, keep = slots.boot()
    if not keep:
        del sys.modules["slots"], slots  # 3 KB of code the app does not need
    gc.collect()  # the parsed trackside.json, the selection: App needs room in one piece
    if outbox is not None:  # else `app` is the update client
        from app import App

        app = App(app, board, outbox)
    gc.collect()  # what loading the modules left behind
    app.run()
except KeyboardInterrupt:  # Ctrl-C, e.g. from `trackside deploy` or `trackside console`
    if board is None or board.wdt is None:
        print("trackside: stopped; no watchdog armed, the board stays in the REPL")
    else:
        print("trackside: stopped, but the watchdog is armed and cannot be stopped: the board"
              " resets within %d s; deploy right after that reset" % -(-board.wdt_ms // 1000))
except Exception as e:
    if keep:
        slots.failed(e)  # on probation: roll back; in the update client: back to the app
    raise
