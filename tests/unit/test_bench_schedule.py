"""The benchmarks' split of a thread's time between running, waiting for a core and
idle (tools.benchkit), and the dispatcher benchmark's figures per action built on it
(tools.bench_dispatcher)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from tools.bench_dispatcher import Throughput
from tools.benchkit import Schedule, main_thread_schedule, schedule_split

pytestmark = pytest.mark.unit


def test_split_divides_the_wall_time() -> None:
    split = schedule_split(Schedule(10.0, 2.0), Schedule(10.6, 2.1), wall=1.0)
    assert split == {"running": 0.6, "waiting_for_core": 0.1, "idle": 0.3}


def test_idle_is_never_negative() -> None:
    # the kernel's counters and the wall clock are read a moment apart
    split = schedule_split(Schedule(0.0, 0.0), Schedule(0.95, 0.1), wall=1.0)
    assert split["idle"] == 0.0
    assert split["running"] == 0.95


def test_a_wall_time_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        schedule_split(Schedule(0.0, 0.0), Schedule(0.0, 0.0), wall=0.0)


def _spin(seconds: float) -> None:
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def test_the_kernel_counts_the_main_threads_running_time() -> None:
    before = main_thread_schedule(os.getpid())
    assert before is not None  # Linux with scheduler statistics, as CI runs
    _spin(0.05)
    after = main_thread_schedule(os.getpid())
    assert after is not None
    assert after.running - before.running >= 0.04


def test_another_threads_running_time_is_not_the_main_threads() -> None:
    before = main_thread_schedule(os.getpid())
    assert before is not None
    worker = threading.Thread(target=_spin, args=(0.2,))
    worker.start()
    worker.join()
    after = main_thread_schedule(os.getpid())
    assert after is not None
    # the main thread only waited on join: far less than the worker's 0.2 s
    assert after.running - before.running < 0.1


def test_a_process_that_is_gone_has_no_schedule() -> None:
    assert main_thread_schedule(2**22 + 12345) is None


def _throughput(**kw: object) -> Throughput:
    base: dict[str, object] = {
        "cores": {},
        "loop": {},
        "actions": 1000,
        "cpu_seconds": 0.25,
        "loop_seconds": 0.2,
    }
    return Throughput(**{**base, **kw})  # type: ignore[arg-type]


def test_figures_per_action() -> None:
    figures = _throughput()
    assert figures.cpu_us_per_action() == pytest.approx(250.0)
    assert figures.loop_us_per_action() == pytest.approx(200.0)


@pytest.mark.parametrize(
    "kw",
    [{"actions": 0}, {"cpu_seconds": 0.0, "loop_seconds": None}],
)
def test_nothing_measured_gives_no_figure(kw: dict[str, object]) -> None:
    figures = _throughput(**kw)
    assert figures.cpu_us_per_action() is None
    assert figures.loop_us_per_action() is None
