"""The benchmarks' split of a thread's time between running, waiting for a core and
idle (tools.benchkit): read from the kernel, divided over a wall time."""

from __future__ import annotations

import os
import time

import pytest

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


def test_the_kernel_counts_this_threads_running_time() -> None:
    before = main_thread_schedule(os.getpid())
    assert before is not None
    spin_until = time.process_time() + 0.05
    while time.process_time() < spin_until:
        pass
    after = main_thread_schedule(os.getpid())
    assert after is not None
    assert after.running - before.running >= 0.04
    assert after.waiting >= before.waiting


def test_a_process_that_is_gone_has_no_schedule() -> None:
    assert main_thread_schedule(2**22 + 12345) is None
