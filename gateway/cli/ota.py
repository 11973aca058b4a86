"""`trackside ota keygen|release|verify|push`: signed over-the-air updates of the device app;
`trackside ota rollout|status|pause|resume|abort`: staged rollouts through Kafka."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from gateway.cli.console import console
from gateway.firmware_bundle import BOARDS
from gateway.ota import OtaError
from gateway.ota.push import DeviceUpdate, Push, Target
from gateway.ota.release import (
    MIN_MICROPYTHON,
    build_release,
    generate_key,
    load_private_key,
    load_public_key,
    read_release,
)
from gateway.ota.rollout import STATES, AbortRule, RolloutPlan, RolloutState, summarize
from gateway.ota.store import RolloutStore, ota_topic_names, release_id
from gateway.topics import Topics, ensure_topics

__all__ = ["app"]

app = typer.Typer(
    help="Over-the-air app updates: release keys, signed releases, pushing them to devices, "
    "staged rollouts through Kafka.",
    no_args_is_help=True,
)

PUBLIC_KEY = typer.Option(
    Path("release.pub"), "--public-key", metavar="FILE", help="The public release key (hex)."
)
BOOTSTRAP = typer.Option(
    "127.0.0.1:9092", "--bootstrap-servers", metavar="HOST:PORT", help="The Kafka cluster."
)
PREFIX = typer.Option(
    "trackside", metavar="PREFIX", help="Topic names' prefix (as the gateways' ota.topics)."
)
ROLLOUT = typer.Argument(..., metavar="ROLLOUT", help="The rollout's id.")


@app.command()
def keygen(
    key: Path = typer.Option(
        Path("release.key"), metavar="FILE", help="Where to write the private key (mode 600)."
    ),
    public_key: Path = PUBLIC_KEY,
) -> None:
    """Make the fleet's release key; devices get the public half as trackside.json's ota_key."""
    public_hex = generate_key(key, public_key)
    console.print(f"private key [bold]{key}[/] (keep it offline); public key {public_key}:")
    console.print(public_hex)


@app.command()
def release(
    version: str = typer.Option(..., metavar="VERSION", help="The release's version, e.g. 1.1.0."),
    key: Path = typer.Option(Path("release.key"), metavar="FILE", help="The private release key."),
    board: str = typer.Option("esp32-devkitc", help=f"Board kind: {', '.join(BOARDS)}."),
    out: Path | None = typer.Option(
        None, metavar="FILE", help="Bundle to write.", show_default="app-VERSION-BOARD.tar"
    ),
    firmware: Path | None = typer.Option(
        None, metavar="DIR", help="Take the app's modules from DIR instead of this installation."
    ),
    min_micropython: str = typer.Option(MIN_MICROPYTHON, help="Oldest MicroPython it runs on."),
) -> None:
    """Build the app for one board kind (compiled as `deploy` compiles it) and sign it."""
    data = build_release(board, version, load_private_key(key), firmware, min_micropython)
    target = out or Path(f"app-{version}-{board}.tar")
    target.write_bytes(data)
    made = read_release(data)
    console.print(f"[green]{target}[/]: {version} for {board}, {len(made.files)} files, "
                  f"{made.size} bytes to fetch, bundle {len(data)} bytes")


@app.command()
def verify(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="A release bundle."),
    public_key: Path = PUBLIC_KEY,
) -> None:
    """Check a bundle as a device would: the signature, then every file's SHA-256."""
    made = read_release(bundle.read_bytes(), load_public_key(public_key.read_text()))
    manifest = made.manifest
    console.print(f"[green]valid[/]: {made.version} for {', '.join(manifest['boards'])}, "
                  f"MicroPython {manifest['micropython']} or later, {len(made.files)} files, "
                  f"{made.size} bytes, signed by {public_key}")


@app.command()
def push(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="A release bundle."),
    train: str = typer.Option(..., metavar="TRAIN", help="Train of the devices."),
    device: list[int] = typer.Option(..., metavar="ID", help="Device id; repeat for several."),
    host: str = typer.Option("127.0.0.1", help="The gateway's MQTT broker."),
    port: int = typer.Option(1883, help="Its port."),
    user: str = typer.Option("", metavar="NAME", help="A service account of the registry."),
    password_file: Path | None = typer.Option(
        None, metavar="FILE", help="File holding its password (else $TRACKSIDE_MQTT_PASSWORD)."
    ),
    public_key: Path = PUBLIC_KEY,
    timeout: float = typer.Option(600.0, metavar="SECONDS", help="Per device, to its verdict."),
) -> None:
    """Update devices over their MQTT topics; each ends confirmed or rolled back (and why)."""
    made = read_release(bundle.read_bytes(), load_public_key(public_key.read_text()))
    password = (password_file.read_text().strip() if password_file
                else os.environ.get("TRACKSIDE_MQTT_PASSWORD", ""))
    pusher = Push(made, [Target(train, d) for d in device], host, port, user or None,
                  password or None, timeout_s=timeout)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TextColumn("{task.fields[state]}"))
    with Progress(*columns, console=console, transient=True) as progress:
        tasks = {d: progress.add_task(f"{train}/{d}", total=made.size, state="") for d in device}

        def show(updates: list[DeviceUpdate]) -> None:
            for u in updates:
                progress.update(tasks[u.target.device_id], completed=min(u.fetched, made.size),
                                state=u.state)

        results = pusher.run(show)
    table = Table("device", "result", "seconds", "detail")
    for u in results:
        colour = "green" if u.ok else "red"
        table.add_row(f"{train}/{u.target.device_id}", f"[{colour}]{u.state}[/]",
                      f"{u.seconds:.1f}", u.detail)
    console.print(table)
    if not all(u.ok for u in results):
        raise OtaError(f"{sum(not u.ok for u in results)} of {len(results)} devices not updated")


@app.command()
def rollout(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="A release bundle."),
    rollout_id: str = typer.Option(
        "", "--id", metavar="ID", help="The rollout's id.", show_default="VERSION-random"
    ),
    train: list[str] = typer.Option(
        [], metavar="TRAIN", help="Only this train's devices; repeat for several."
    ),
    device: list[str] = typer.Option(
        [], metavar="TRAIN/ID", help="Only this device; repeat. No --train, no --device: all."
    ),
    canary: list[str] = typer.Option(
        [], metavar="TRAIN/ID", help="Update first; the waves wait for every canary's verdict."
    ),
    waves: str = typer.Option(
        "100", metavar="PCT,...", help="Cumulative percentages of each gateway's targets."
    ),
    rate: int | None = typer.Option(
        None, metavar="N", help="At most N new devices a minute on each gateway."
    ),
    abort_after: int = typer.Option(3, metavar="N", help="Apply the abort rule from N verdicts."),
    max_failures: str = typer.Option(
        "20%", metavar="PCT", help="Abort when more verdicts than this failed."
    ),
    timeout: float = typer.Option(600.0, metavar="SECONDS", help="Per device, to its verdict."),
    public_key: Path = PUBLIC_KEY,
    bootstrap_servers: str = BOOTSTRAP,
    topic_prefix: str = PREFIX,
    replication_factor: int = typer.Option(
        1, min=1, metavar="N", help="Copies of the OTA topics, if this creates them."
    ),
) -> None:
    """Start a staged rollout through Kafka: canaries first, then wave by wave."""
    made = read_release(bundle.read_bytes(), load_public_key(public_key.read_text()))
    try:
        plan = RolloutPlan(
            id=rollout_id or f"{made.version}-{secrets.token_hex(3)}",
            release=release_id(made.version, made.digest),
            version=made.version,
            trains=tuple(train), devices=tuple(device), canaries=tuple(canary),
            waves=tuple(float(w) for w in waves.split(",")),
            rate_per_min=rate,
            abort=AbortRule(min_devices=abort_after,
                            max_failure_pct=float(max_failures.rstrip("%"))),
            timeout_s=timeout,
        )
    except ValueError as exc:  # pydantic's ValidationError is one
        raise OtaError(f"not a rollout plan: {exc}") from exc
    topics = Topics.with_prefix(topic_prefix)
    ensure_topics(bootstrap_servers, topics, only=ota_topic_names(topics),
                  replication_factor=replication_factor)
    store = _store(bootstrap_servers, topics)
    try:
        if plan.id in store.plans:
            raise OtaError(f"rollout {plan.id} exists already ({store.plans[plan.id].state}): "
                           "choose another --id")
        store.put_release(plan.release, bundle.read_bytes())
        store.put_plan(plan)
    finally:
        store.close()
    console.print(f"rollout [bold]{plan.id}[/]: {made.version} ({plan.release}), waves "
                  f"{', '.join(f'{w:g}%' for w in plan.waves)}; follow it with "
                  f"`trackside ota status {plan.id}`")


@app.command()
def status(
    rollout_id: str | None = typer.Argument(None, metavar="[ROLLOUT]", help="One rollout."),
    bootstrap_servers: str = BOOTSTRAP,
    topic_prefix: str = PREFIX,
) -> None:
    """Each rollout's state, and its devices counted by state, per wave."""
    store = _store(bootstrap_servers, Topics.with_prefix(topic_prefix))
    store.close()
    plans = sorted(store.plans.values(), key=lambda p: p.updated)
    if rollout_id is not None:
        plans = [_plan(store, rollout_id)]
    if not plans:
        console.print("no rollouts")
    for plan in plans:
        colour = {"running": "cyan", "paused": "yellow", "aborted": "red"}.get(plan.state, "green")
        console.print(f"[bold]{plan.id}[/]: {plan.version} [{colour}]{plan.state}[/] "
                      f"{plan.reason}".rstrip())
        progress = [p for p in store.progress.values() if p.rollout == plan.id]
        counts = summarize(progress)
        shown = [s for s in STATES if any(c[s] for c in counts.values())]
        table = Table("wave", *shown, "devices")
        for wave, by_state in counts.items():
            table.add_row("canary" if wave == 0 else f"{wave} ({plan.waves[wave - 1]:g}%)",
                          *(str(by_state[s]) for s in shown), str(sum(by_state.values())))
        console.print(table)


@app.command()
def pause(rollout_id: str = ROLLOUT, bootstrap_servers: str = BOOTSTRAP,
          topic_prefix: str = PREFIX) -> None:
    """No new offers (devices mid-update carry on to their verdict)."""
    _change(rollout_id, "paused", ("running",), bootstrap_servers, topic_prefix)


@app.command()
def resume(rollout_id: str = ROLLOUT, bootstrap_servers: str = BOOTSTRAP,
           topic_prefix: str = PREFIX) -> None:
    """Offer again where a pause stopped."""
    _change(rollout_id, "running", ("paused",), bootstrap_servers, topic_prefix)


@app.command()
def abort(rollout_id: str = ROLLOUT, bootstrap_servers: str = BOOTSTRAP,
          topic_prefix: str = PREFIX) -> None:
    """Stop the rollout for good (devices mid-update carry on to their verdict)."""
    _change(rollout_id, "aborted", ("running", "paused"), bootstrap_servers, topic_prefix)


def _store(bootstrap_servers: str, topics: Topics) -> RolloutStore:
    """The rollouts and their progress, read to the end (not the bundles)."""
    store = RolloutStore(bootstrap_servers, topics, with_releases=False)
    try:
        store.catch_up()
    except OtaError:
        store.close()
        raise
    return store


def _plan(store: RolloutStore, rollout_id: str) -> RolloutPlan:
    plan = store.plans.get(rollout_id)
    if plan is None:
        known = ", ".join(sorted(store.plans)) or "none"
        raise OtaError(f"no rollout {rollout_id!r} in {store.topics.ota_rollouts} (known: {known})")
    return plan


def _change(rollout_id: str, state: RolloutState, allowed: tuple[str, ...],
            bootstrap_servers: str, topic_prefix: str) -> None:
    store = _store(bootstrap_servers, Topics.with_prefix(topic_prefix))
    try:
        plan = _plan(store, rollout_id)
        if plan.state not in allowed:
            raise OtaError(f"rollout {rollout_id} is {plan.state}: only a rollout that is "
                           f"{' or '.join(allowed)} can be made {state}")
        store.put_plan(plan.model_copy(update={
            "state": state, "reason": "by the operator" if state == "aborted" else "",
            "updated": time.time()}))
    finally:
        store.close()
    console.print(f"rollout [bold]{rollout_id}[/]: {state}")
