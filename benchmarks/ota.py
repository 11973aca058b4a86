"""Over-the-air updates: bundle size, on-device signature check, the update client's footprint,
and the transfer through the embedded broker.

Run: `python -m benchmarks.ota`. Measured:

- sizes: the signed bundle of a unix release (tar), the bytes a device fetches (its files),
  and the compiled update client (`ota.mpy`, `ed25519.mpy`) and boot selector (`slots.mpy`);
- verify: firmware/ed25519.py checking a release's signature (Ed25519 over the manifest's
  SHA-256, as the update client does) on the unix port from PyPI (64-bit) and on the same
  port built 32-bit (benchmarks/micropython32.py); the import (which computes SHA-512's
  constants) separately; the median of VERIFY_RUNS;
- update client heap: `gc.mem_alloc()` after a `gc.collect()`, above the interpreter's own, with
  what runs in update mode loaded (the board layer without sensors, the link, umqtt, ota.py),
  then with ed25519.py too, after one check, on both builds;
- transfer: DEVICES unix-port devices on the embedded broker (`trackside broker run`), one
  release pushed to one device and then to all at once, from the offer to the verdict
  (`confirmed`) and from the first chunk request to the switch (fetch and hash checks);
- rollout (`python -m benchmarks.ota rollout` measures only this, into ota-rollout.json):
  ROLLOUT_DEVICES unix-port devices behind `trackside gateway run` with `ota:` and Kafka, a
  staged rollout (one canary, waves 10/50/100 %) from the plan written to Kafka to `done`,
  each wave from its first offer to its last verdict, each device from offer to `confirmed`.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.micropython32 import micropython32
from benchmarks.report import report
from benchmarks.services import child, kafka_cluster, wait_for_port
from gateway.devicetools.deploy import compile_mpy
from gateway.firmware_bundle import FIRMWARE
from gateway.localkafka import free_port
from gateway.ota.config import OtaSettings
from gateway.ota.executor import Fleet
from gateway.ota.push import DeviceUpdate, Push, Target
from gateway.ota.release import Release, build_release, read_release
from gateway.ota.rollout import DeviceProgress, RolloutPlan
from gateway.ota.store import RolloutStore, ota_topic_names, release_id
from gateway.topics import Topics, ensure_topics
from tests.fixtures.micropython import layout_board, micropython_binary

__all__ = ["main"]

VERIFY_RUNS = 9
DEVICES = 4
ROLLOUT_DEVICES = 20
# Run on the device: import ed25519 and check the signature VERIFY_RUNS times; the update
# client's heap before, with and after ed25519. Prints one JSON line.
PROBE = """
import gc, json, sys, time
from binascii import unhexlify
sys.path[0] = ""
gc.collect()
BASE = gc.mem_alloc()
cfg = json.load(open("trackside.json"))
import board, ota
client = ota.Updater(cfg, board.Board(cfg), {{}}, None, False)
gc.collect()
loaded = gc.mem_alloc() - BASE
t = time.ticks_us()
import ed25519
imported_ms = time.ticks_diff(time.ticks_us(), t) / 1000
gc.collect()
with_ed = gc.mem_alloc() - BASE
key, digest, sig = unhexlify("{key}"), unhexlify("{digest}"), unhexlify("{sig}")
runs = []
for _ in range({runs}):
    t = time.ticks_us()
    assert ed25519.verify(key, digest, sig)
    runs.append(time.ticks_diff(time.ticks_us(), t) / 1000)
gc.collect()
after = gc.mem_alloc() - BASE
runs.sort()
print(json.dumps({{"loaded": loaded, "with_ed25519": with_ed, "after_check": after,
                  "import_ms": imported_ms, "verify_ms": runs[len(runs) // 2]}}))
"""


def sizes(bundle: bytes, release: Release) -> list[dict[str, object]]:
    """The bundle, what a device fetches, and the compiled update client."""
    rows: list[dict[str, object]] = [
        {"what": "release bundle, unix (tar: manifest, signature, files)", "value": len(bundle)},
        {"what": f"  fetched by a device ({len(release.files)} files)", "value": release.size},
        {"what": "  manifest", "value": len(release.manifest_bytes)},
    ]
    for name in ("ota.py", "ed25519.py", "slots.py"):
        mpy = compile_mpy(FIRMWARE / name, name)
        rows.append({"what": f"{name[:-3]}.mpy", "value": len(mpy)})
    return rows


def on_device(
    micropython: Path, build: str, tmp: Path, release: Release
) -> list[dict[str, object]]:
    """Verify time and update-client heap on one build of the unix port."""
    board = layout_board(tmp / f"probe-{micropython.parent.name}", {
        "device_id": 1, "train_id": "BENCH", "board": "unix",
        "broker": {"host": "127.0.0.1", "port": 1}})
    key = KEY.public_key().public_bytes_raw().hex()
    (board / "probe.py").write_text(PROBE.format(
        key=key, digest=release.digest.hex(), sig=release.signature.hex(), runs=VERIFY_RUNS))
    out = subprocess.run([str(micropython), "probe.py"], cwd=board, env={"MICROPYPATH": "lib"},
                         capture_output=True, text=True, timeout=300, check=True).stdout
    got = json.loads(out.splitlines()[-1])
    return [
        {"what": f"signature check (Ed25519, one SHA-512 block), ms, {build}",
         "value": got["verify_ms"]},
        {"what": f"  import of ed25519.py (SHA-512 constants computed), ms, {build}",
         "value": got["import_ms"]},
        {"what": f"update client heap: board, link, umqtt, ota, {build}",
         "value": got["loaded"]},
        {"what": f"  with ed25519.py imported, {build}", "value": got["with_ed25519"]},
        {"what": f"  after one check, {build}", "value": got["after_check"]},
    ]


def _supervise(boards: list[Path], stop: threading.Event) -> None:
    # As a board resets: a device that exits (to switch slots) is started again at once.
    procs: dict[Path, subprocess.Popen[bytes]] = {}
    micropython = micropython_binary()
    try:
        while not stop.wait(0.05):
            for board in boards:
                proc = procs.get(board)
                if proc is None or proc.poll() is not None:
                    procs[board] = subprocess.Popen(
                        [str(micropython), "main.py"], cwd=board,
                        env={"MICROPYPATH": f"{board}:{board / 'lib'}"},
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(10)


def transfer(tmp: Path, releases: list[Release]) -> list[dict[str, object]]:
    """Push to one device, then to DEVICES at once, through the embedded broker."""
    port = free_port()
    key = KEY.public_key().public_bytes_raw().hex()
    boards = [layout_board(tmp / f"device-{n}", {
        "device_id": n, "train_id": "BENCH", "board": "unix", "sample_ms": 1000,
        "broker": {"host": "127.0.0.1", "port": port}, "backoff_ms": [200, 1000],
        "ota_key": key}) for n in range(1, DEVICES + 1)]
    argv = [sys.executable, "-m", "gateway", "broker", "run", "--port", str(port)]
    stop = threading.Event()
    with child(argv, tmp / "broker.log") as broker:
        wait_for_port(port, 30, broker)
        devices = threading.Thread(target=_supervise, args=(boards, stop), daemon=True)
        devices.start()
        try:
            one = _push(releases[0], [Target("BENCH", 1)], port)
            fleet = _push(releases[1], [Target("BENCH", n) for n in range(1, DEVICES + 1)], port)
        finally:
            stop.set()
            devices.join()
    rows: list[dict[str, object]] = []
    for label, updates in (("1 device", one), (f"{DEVICES} devices at once", fleet)):
        if not all(u.ok for u in updates):
            raise SystemExit(f"an update failed: {updates}")
        fetch = [u.fetch_seconds or 0.0 for u in updates]
        rows += [
            {"what": f"offer to confirmed, s, {label}, mean (max)",
             "value": f"{statistics.mean(u.seconds for u in updates):.2f} "
                      f"({max(u.seconds for u in updates):.2f})"},
            {"what": f"  fetch and hash checks, s, {label}, mean (max)",
             "value": f"{statistics.mean(fetch):.2f} ({max(fetch):.2f})"},
        ]
    return rows


def _push(release: Release, targets: list[Target], port: int) -> list[DeviceUpdate]:
    return Push(release, targets, "127.0.0.1", port, timeout_s=120).run()


def rollout(tmp: Path, bundle: bytes, release: Release) -> list[dict[str, object]]:
    """A staged rollout to ROLLOUT_DEVICES devices through a gateway and Kafka, end to end."""
    mqtt_port, http_port = free_port(), free_port()
    key = KEY.public_key().public_bytes_raw().hex()
    (tmp / "release.pub").write_text(key)
    topics = Topics.with_prefix("bench")
    boards = [layout_board(tmp / f"rollout-{n}", {
        "device_id": n, "train_id": f"B{1 + n % 2}", "board": "unix", "sample_ms": 1000,
        "broker": {"host": "127.0.0.1", "port": mqtt_port}, "backoff_ms": [200, 1000],
        "ota_key": key}) for n in range(1, ROLLOUT_DEVICES + 1)]
    stop = threading.Event()
    with kafka_cluster(tmp / "kafka") as servers:
        (tmp / "gateway.yaml").write_text(yaml.safe_dump({
            "broker": {"port": mqtt_port}, "connectors": [], "http": {"port": http_port},
            "ota": {"bootstrap_servers": servers, "topics": topics.model_dump(),
                    "public_key": "release.pub", "discovery_s": 1}}))
        ensure_topics(servers, topics, only=ota_topic_names(topics))
        argv = [sys.executable, "-m", "gateway", "gateway", "run", "-c", str(tmp / "gateway.yaml")]
        with child(argv, tmp / "gateway.log") as gateway:
            wait_for_port(http_port, 60, gateway)
            devices = threading.Thread(target=_supervise, args=(boards, stop), daemon=True)
            devices.start()
            fleet = Fleet(OtaSettings(gateway_id="benchmark"), "127.0.0.1", mqtt_port)
            fleet.start()
            try:
                _until(lambda: len(fleet.devices()) == ROLLOUT_DEVICES, 120, "devices online")
                history: list[DeviceProgress] = []
                store = RolloutStore(servers, topics, on_progress=history.append)
                store.catch_up()
                plan = RolloutPlan(id="bench", release=release_id(release.version,
                                   release.digest), version=release.version,
                                   canaries=("B2/1",), waves=(10, 50, 100), timeout_s=300)
                started = time.time()
                store.put_release(plan.release, bundle)
                store.put_plan(plan)
                _until(lambda: store.poll(0.2) >= 0 and store.plans["bench"].state != "running",
                       600, "the rollout done")
                ended = store.plans["bench"].updated
                store.close()
            finally:
                fleet.close()
                stop.set()
                devices.join()
    if store.plans["bench"].state != "done":
        raise SystemExit(f"the rollout did not end done: {store.plans['bench']}")
    return _rollout_rows(history, ended - started)


def _rollout_rows(history: list[DeviceProgress], total_s: float) -> list[dict[str, object]]:
    offered: dict[Target, float] = {}
    verdict: dict[Target, float] = {}
    wave_of: dict[Target, int] = {}
    for p in history:
        wave_of[p.target] = p.wave
        if p.state == "offered":
            offered.setdefault(p.target, p.at)
        elif p.state == "confirmed":
            verdict[p.target] = p.at
    per_device = [verdict[t] - offered[t] for t in verdict]
    rows: list[dict[str, object]] = [
        {"what": f"rollout, {len(verdict)} devices (1 canary, waves 10/50/100 %), plan written "
                 "to done, s", "value": f"{total_s:.1f}"},
        {"what": "  each device, offer to confirmed, s, mean (max)",
         "value": f"{statistics.mean(per_device):.2f} ({max(per_device):.2f})"},
    ]
    for wave in sorted(set(wave_of.values())):
        members = [t for t, w in wave_of.items() if w == wave]
        span = max(verdict[t] for t in members) - min(offered[t] for t in members)
        label = "canary" if wave == 0 else f"wave {wave}"
        rows.append({"what": f"  {label} ({len(members)} devices), first offer to last "
                             "verdict, s", "value": f"{span:.2f}"})
    return rows


def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.1)


KEY = Ed25519PrivateKey.generate()


def main() -> None:
    """Measure and report; `rollout` as the argument measures only the staged rollout."""
    if sys.argv[1:] == ["rollout"]:
        bundle = build_release("unix", "1.1.0", KEY)
        with tempfile.TemporaryDirectory() as tmp:
            rows = rollout(Path(tmp), bundle, read_release(bundle, KEY.public_key()))
        report("ota-rollout", "Staged OTA rollout", rows, notes=ROLLOUT_NOTES)
        return
    bundle = build_release("unix", "1.1.0", KEY)
    release = read_release(bundle, KEY.public_key())
    with tempfile.TemporaryDirectory() as tmp:
        rows = sizes(bundle, release)
        rows += on_device(micropython_binary(), "64-bit unix port", Path(tmp), release)
        rows += on_device(micropython32(), "32-bit unix port", Path(tmp), release)
        second = read_release(build_release("unix", "1.2.0", KEY))
        rows += transfer(Path(tmp), [release, second])
    report(
        "ota",
        "Over-the-air updates",
        rows,
        notes="Bytes unless stated. The update client runs alone after a reboot (docs/ota.md), "
        "so its heap is not added to the app's. Transfer: 1 KiB chunks, each requested by the "
        "device, over loopback on a 2-core machine; a board on Wi-Fi waits a real round trip "
        "per chunk.",
    )


ROLLOUT_NOTES = (
    "One gateway (embedded broker) on the same 2-core machine as Kafka and the devices; a "
    "wave starts once every device of the waves before it has its verdict, so the total is "
    "about the canary plus one update per wave.")


if __name__ == "__main__":
    main()
