"""interlock._idle: a service at the idle CPU policy goes back to the ordinary one while it
is starved (its event loop runs late) and returns to idle once it has caught up."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time

import pytest

from interlock import _idle
from interlock._idle import IdleGuard, set_cpu_policy
from interlock._settings import SettingsError


def test_late_ticks_leave_idle_at_once_and_return_only_after_the_hold() -> None:
    switched: list[int] = []
    guard = IdleGuard(late_s=0.05, hold_s=5.0, set_policy=switched.append)
    guard.tick(0.01, now=100.0)  # on time: stays idle
    assert switched == [] and guard.idle
    guard.tick(0.08, now=100.1)  # late with no CPU: starved, ordinary policy
    assert switched == [os.SCHED_OTHER] and not guard.idle and guard.starved == 1
    guard.tick(0.2, now=100.3)  # still starved: no second switch
    guard.tick(0.0, now=104.0)  # caught up, but not for 5 s since the last late tick
    assert switched == [os.SCHED_OTHER]
    guard.tick(0.0, now=105.3)
    assert switched == [os.SCHED_OTHER, os.SCHED_IDLE] and guard.idle
    guard.tick(0.06, now=106.0)
    assert switched == [os.SCHED_OTHER, os.SCHED_IDLE, os.SCHED_OTHER] and guard.starved == 2


def test_late_from_its_own_work_is_not_starving() -> None:
    switched: list[int] = []
    guard = IdleGuard(late_s=0.05, set_policy=switched.append)
    guard.tick(0.3, now=1.0, cpu_share=0.9)  # the process was busy (a store's insert): not starved
    assert switched == [] and guard.idle


def test_an_event_loop_late_without_cpu_trips_the_guard_in_a_real_loop() -> None:
    switched: list[int] = []
    cpu = [0.0]  # the process's CPU clock, standing still: it got no core

    async def main() -> None:
        guard = IdleGuard(late_s=0.05, every_s=0.01, hold_s=60.0, set_policy=switched.append, cpu_clock=lambda: cpu[0])
        guard.start()
        await asyncio.sleep(0.05)
        assert switched == []
        time.sleep(0.15)  # noqa: ASYNC251 - blocks the loop on purpose: its timer cannot run, no CPU counted
        await asyncio.sleep(0.05)
        guard.stop()

    asyncio.run(main())
    assert switched == [os.SCHED_OTHER]


def test_an_event_loop_late_from_its_own_busy_work_does_not_trip_the_guard() -> None:
    switched: list[int] = []

    async def main() -> None:
        guard = IdleGuard(late_s=0.05, every_s=0.01, hold_s=60.0, set_policy=switched.append)
        guard.start()
        await asyncio.sleep(0.05)
        end = time.monotonic() + 0.15
        while time.monotonic() < end:  # the loop's own work, on the CPU the whole time
            pass
        await asyncio.sleep(0.05)
        guard.stop()

    asyncio.run(main())
    assert switched == []


def test_a_failed_switch_does_not_end_the_checks() -> None:
    calls: list[int] = []

    def flaky(policy: int) -> None:
        calls.append(policy)
        if len(calls) == 1:
            raise PermissionError("not now")

    cpu = [0.0]

    async def main() -> IdleGuard:
        guard = IdleGuard(late_s=0.05, every_s=0.01, hold_s=60.0, set_policy=flaky, cpu_clock=lambda: cpu[0])
        guard.start()
        for _ in range(2):  # starved twice: the first switch fails, the second is tried
            await asyncio.sleep(0.03)
            time.sleep(0.1)  # noqa: ASYNC251 - blocks the loop on purpose
        await asyncio.sleep(0.05)
        guard.stop()
        return guard

    guard = asyncio.run(main())
    assert calls == [os.SCHED_OTHER, os.SCHED_OTHER]
    assert not guard.idle and guard.starved == 1


def test_an_unknown_policy_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="INTERLOCK_BUDGET_CPU_POLICY='lazy'"):
        set_cpu_policy("lazy", "INTERLOCK_BUDGET_CPU_POLICY")
    assert set_cpu_policy("normal", "INTERLOCK_BUDGET_CPU_POLICY") is None


def test_idle_is_refused_where_the_process_could_not_leave_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_idle, "can_leave_idle", lambda: False)
    with caplog.at_level(logging.WARNING, logger="interlock.cpu"):
        assert set_cpu_policy("idle", "INTERLOCK_BUDGET_CPU_POLICY") is None
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert "idle CPU policy refused" in caplog.text


def test_every_thread_of_the_process_switches_both_ways() -> None:
    # In a process of its own: set_thread_policies changes all of a process's threads.
    script = """
import os, threading
from interlock._idle import can_leave_idle, set_thread_policies
stop = threading.Event()
threads = [threading.Thread(target=stop.wait) for _ in range(3)]
for t in threads: t.start()
def policies():
    return sorted({os.sched_getscheduler(int(n)) for n in os.listdir("/proc/self/task")})
assert can_leave_idle()
set_thread_policies(os.SCHED_IDLE)
idle = policies()
set_thread_policies(os.SCHED_OTHER)
print(idle, policies(), len(os.listdir("/proc/self/task")))
stop.set()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"[{os.SCHED_IDLE}]", f"[{os.SCHED_OTHER}]", "4"]
