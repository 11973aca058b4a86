# Chooses at boot what runs from which slot (over-the-air updates, docs/ota.md): the app, the
# update client alone, or safe mode; puts probation on a new release and rolls it back when it
# fails. It imports nothing of the app before the slot is chosen and no module of a slot at
# all, so that no release can break it; updates never replace it, nor main.py. On a normal
# boot main.py drops this module once the app is built (its code would cost the app 3 KB of
# heap); it stays loaded only on probation and while a verdict waits to be reported.
import json
import os
import sys
import time

BOARDS = {"unix": "board_unix", "esp32-devkitc": "board_esp32", "pico-w": "board_pico_w"}
STATE = "ota.json"  # the slot to boot, its probation, the failed boots in a row
TRYING = "ota.try"  # this boot has not passed its health check (yet): the app removes it
SAFE_AFTER = 10  # failed boots in a row, then safe mode (ESPHome's default)
state = {}


def save():
    with open("ota.tmp", "w") as f:
        json.dump(state, f)
    os.rename("ota.tmp", STATE)  # atomic on littlefs and POSIX: a power loss leaves old or new


def reset():
    import machine

    if hasattr(machine, "reset"):
        machine.reset()
    raise SystemExit("reboot")  # the unix port: its supervisor starts it again


def rollback(why):
    """Back to the last confirmed slot; the app there reports `why`."""
    s = state
    s["report"] = {"id": s.get("rid"), "ok": False, "ota": "rolled_back",
                   "version": s.get("ver"), "why": why}
    s["slot"], s["ver"], s["trial"] = s.get("good", ""), s.get("gver", ""), 0
    save()
    print("ota: rolled back:", why)


def select():
    """This boot's mode (app, update or safe), its slot first on sys.path."""
    global state
    try:
        with open(STATE) as f:
            state = json.load(f)
    except (OSError, ValueError):
        pass  # never updated: the app at the root, as `trackside deploy` put it there
    try:
        os.stat(TRYING)  # the last boot did not pass its health check
        failed = 1
    except OSError:
        failed = 0
    if failed and state.get("trial"):  # it went down on probation, before its health check
        try:
            import machine

            why = "watchdog reset" if machine.reset_cause() == machine.WDT_RESET else "reset"
        except (ImportError, AttributeError):
            why = "reset"
        rollback(why + " before the health check")
    if failed or state.get("fails"):
        state["fails"] = state.get("fails", 0) + 1 if failed else 0
        save()
    open(TRYING, "w").close()
    if state.get("fails", 0) >= SAFE_AFTER:
        return "safe"  # the root's networking and update client only
    slot = state.get("slot")
    if slot:
        sys.path.insert(0, slot + "/lib")
        sys.path.insert(0, slot)
    try:
        os.stat("ota.offer")
        return "update"
    except OSError:
        return "app"


def healthy(app):
    """The app connected and its status was acknowledged: confirm a slot on probation and
    report how the last update ended (as a reply to the update's command id)."""
    s = state
    report = s.get("report")
    if s.get("trial"):
        report = {"id": s.get("rid"), "ok": True, "ota": "confirmed", "version": s["ver"],
                  "slot": s["slot"]}
    if report:
        app.link.publish(app._reply, json.dumps(report))  # first: if it fails, all is retried
    if s.get("trial"):
        s["trial"], s["good"], s["gver"] = 0, s["slot"], s["ver"]
        del app.board.feed  # the probation deadline (boot()) is over
    s["report"] = None
    save()


def boot():
    """The board layer and, for the app, its configuration and outbox (main.py builds it once
    this module is gone), or the update client alone; and whether this module must stay."""
    mode = select()
    with open("trackside.json") as f:
        cfg = json.load(f)
    if mode == "app":
        # The outbox ring is the app's one large block (8.7 KB): taken first, while the heap
        # is one free stretch; after the imports it might only fit in fragments.
        import wire
        from outbox import Outbox

        outbox = Outbox(cfg.get("outbox", 256), wire.HEADER_SIZE + 2 * len(wire.CHANNELS))
    kind = BOARDS[cfg["board"]]
    if mode != "app" and kind == "board_unix":
        kind = "board"  # the unix board less its simulated train (13 KB): no sensors needed
    board = __import__(kind).Board(cfg)
    if mode != "app":
        import ota

        return board, ota.Updater(cfg, board, state, save, mode == "safe"), None, True
    keep = state.get("trial") or state.get("report")
    if state.get("trial"):
        # Probation: the health check must pass within the deadline. Checked where the app
        # feeds the watchdog, which a hung app stops doing (then the watchdog resets).
        feed, limit = board.feed, cfg.get("ota_probation_s", 120)
        due = time.ticks_add(time.ticks_ms(), limit * 1000)

        def probation():
            if time.ticks_diff(time.ticks_ms(), due) > 0:
                rollback("no health check within %d s" % limit)
                reset()
            feed()

        board.feed = probation
    cfg["release"] = (state.get("ver", ""), state.get("slot", ""))
    cfg["healthy"] = healthy if keep else 0
    return board, cfg, outbox, keep


def failed(e):
    """A crash, or a release that fails to import: on probation, the last good slot again; in
    the update client, the app again. Otherwise nothing: the caller raises it."""
    if state.get("trial"):
        sys.print_exception(e)
        rollback("%s: %s" % (type(e).__name__, e))
        reset()
    try:
        os.remove("ota.offer")
    except OSError:
        return
    sys.print_exception(e)
    state["report"] = {"id": None, "ok": False, "ota": "failed", "why": repr(e)}
    save()
    reset()
