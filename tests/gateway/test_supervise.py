"""The supervisor: restarts with backoff, one log line per restart, state for health checks."""

from __future__ import annotations

import itertools
import logging
import threading
import time

import pytest
from prometheus_client import REGISTRY

from gateway import GatewayError
from gateway.supervise import Backoff, Supervisor
from tests.fixtures.waiting import wait_until

FAST = Backoff(initial_s=0.01, max_s=0.04, reset_after_s=0.5)


def restarts(worker: str) -> float:
    """`trackside_worker_restarts_total` of one worker, as Prometheus would scrape it."""
    return REGISTRY.get_sample_value("trackside_worker_restarts_total", {"worker": worker}) or 0.0


def idle(stop: threading.Event) -> None:
    """A worker that runs until it is stopped."""
    stop.wait()


def test_backoff_doubles_up_to_the_limit() -> None:
    backoff = Backoff()
    assert [backoff.delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.delay(10_000) == 60


def test_a_failing_worker_is_restarted_with_growing_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    starts: list[float] = []

    def worker(stop: threading.Event) -> None:
        starts.append(time.monotonic())
        if len(starts) < 5:
            raise GatewayError("Kafka said no; do something")
        stop.wait()

    before = restarts("flaky")
    supervisor = Supervisor("flaky", worker, FAST)
    with caplog.at_level(logging.ERROR, logger="gateway.supervise"):
        supervisor.start()
        wait_until(
            lambda: len(starts) == 5 and supervisor.state == "running", 10, "five starts, running"
        )
    assert supervisor.restarts == 4
    assert supervisor.failure == "Kafka said no; do something"
    assert restarts("flaky") - before == 4
    waits = [b - a for a, b in itertools.pairwise(starts)]
    assert waits[0] >= 0.01 and waits[1] >= 0.02 and waits[2] >= 0.04 and waits[3] >= 0.04
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"flaky failed: Kafka said no; do something; restarting it in {d:g} s"
        for d in (0.01, 0.02, 0.04, 0.04)
    ]
    assert all(r.exc_info is None for r in caplog.records)  # our errors: no traceback
    assert supervisor.stop(5)
    assert supervisor.state == "stopped"


def test_a_bug_is_logged_with_its_traceback_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0

    def worker(stop: threading.Event) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise KeyError("oops")
        stop.wait()

    supervisor = Supervisor("buggy", worker, FAST)
    with caplog.at_level(logging.ERROR, logger="gateway.supervise"):
        supervisor.start()
        wait_until(lambda: runs == 2, 10, "runs == 2")
    assert supervisor.failure == "KeyError: 'oops'"
    (record,) = caplog.records
    assert record.exc_info is not None
    assert supervisor.stop(5)


def test_the_wait_starts_again_after_a_long_healthy_run() -> None:
    starts: list[float] = []
    backoff = Backoff(initial_s=0.01, max_s=10.0, reset_after_s=0.3)

    def worker(stop: threading.Event) -> None:
        starts.append(time.monotonic())
        if len(starts) == 3:
            stop.wait(0.35)  # a healthy run, then a failure
        if len(starts) < 5:
            raise GatewayError("again")
        stop.wait()

    supervisor = Supervisor("healthy-then-not", worker, backoff)
    supervisor.start()
    wait_until(lambda: len(starts) == 5, 10, "len(starts) == 5")
    # Waits: 0.01, 0.02, then the healthy run resets the backoff: 0.01 again instead of 0.04.
    assert starts[3] - starts[2] < 0.35 + 0.035
    assert supervisor.stop(5)


def test_returning_without_a_stop_counts_as_a_failure() -> None:
    runs = 0

    def worker(stop: threading.Event) -> None:
        nonlocal runs
        runs += 1
        if runs > 1:
            stop.wait()

    supervisor = Supervisor("quitter", worker, FAST)
    supervisor.start()
    wait_until(lambda: runs == 2, 10, "runs == 2")
    assert supervisor.failure == "returned without being asked to stop"
    assert supervisor.restarts == 1
    assert supervisor.stop(5)


def test_stop_interrupts_the_backoff_and_is_not_a_failure() -> None:
    runs = 0

    def worker(stop: threading.Event) -> None:
        nonlocal runs
        runs += 1
        raise GatewayError("down")

    supervisor = Supervisor("slow", worker, Backoff(initial_s=30))
    supervisor.start()
    wait_until(lambda: supervisor.state == "restarting", 10, "supervisor.state == 'restarting'")
    started = time.monotonic()
    assert supervisor.stop(5)
    assert time.monotonic() - started < 1
    assert (runs, supervisor.state) == (1, "stopped")


def test_an_error_while_stopping_ends_without_restart(caplog: pytest.LogCaptureFixture) -> None:
    def worker(stop: threading.Event) -> None:
        stop.wait()
        raise GatewayError("could not finish cleanly")

    supervisor = Supervisor("ending", worker, FAST)
    supervisor.start()
    with caplog.at_level(logging.WARNING, logger="gateway.supervise"):
        assert supervisor.stop(5)
    assert supervisor.restarts == 0
    assert [r.getMessage() for r in caplog.records] == [
        "ending ended while stopping: could not finish cleanly"
    ]


def test_run_blocks_the_calling_thread_until_stopped() -> None:
    supervisor = Supervisor("foreground", idle, FAST)
    timer = threading.Timer(0.1, supervisor.stop)
    timer.start()
    supervisor.run()
    assert supervisor.state == "stopped"


def test_start_twice_is_refused() -> None:
    supervisor = Supervisor("once", idle, FAST)
    supervisor.start()
    with pytest.raises(GatewayError, match="already started"):
        supervisor.start()
    assert supervisor.stop(5)
