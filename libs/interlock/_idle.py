"""Idle CPU priority for the services off a call's path, guarded against starvation.

On a host the mesh shares (`interlock up`, the benchmarks), a service whose work follows the
answers (the budget service settling commits, trace-ingest storing usage and spans) can run
its threads under Linux's `SCHED_IDLE` policy: it then gets a core only when no ordinary
process wants one, and the scheduler treats a core running only idle-policy threads as free
when it places a waking thread, so the router's wake-ups never wait behind that work. A
niceness (`INTERLOCK_<SERVICE>_NICE`) only weighs the share; it does not do that.

An idle-policy process that never finds a free core would never run: commits would stop
settling and leases stop coming, and budgets fail closed. So `IdleGuard` watches the
process's own event loop: when a timer due every 100 ms runs more than 50 ms late while the
process got less than half a core meanwhile (late from its own work, such as a store's insert,
is not starving), every thread goes back to the ordinary policy (at the service's niceness)
until 5 s pass without that; then back to idle. A process may only leave
`SCHED_IDLE` again with CAP_SYS_NICE or a high enough RLIMIT_NICE: without that the setting
is refused at start (a warning; the service runs at the ordinary policy) rather than risk a
process stuck at idle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable

from interlock._settings import SettingsError

log = logging.getLogger("interlock.cpu")

CPU_POLICIES = ("normal", "idle")


def for_each_thread(apply: Callable[[int], None]) -> None:
    """Call `apply` with the id of every thread of this process (one that ends meanwhile is skipped)."""
    for name in os.listdir("/proc/self/task"):
        try:
            apply(int(name))
        except ProcessLookupError:  # the thread ended meanwhile
            continue


def set_thread_policies(policy: int) -> None:
    """Put every thread of this process under `policy` (os.SCHED_IDLE or os.SCHED_OTHER)."""
    for_each_thread(lambda tid: os.sched_setscheduler(tid, policy, os.sched_param(0)))


def can_leave_idle() -> bool:
    """Whether a thread of this process may go from SCHED_IDLE back to the ordinary policy,
    tried on a throwaway thread (the policy is per thread, so nothing else changes)."""
    outcome: list[bool] = []

    def trial() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except OSError:
            outcome.append(False)
        else:
            outcome.append(True)

    thread = threading.Thread(target=trial, name="interlock-cpu-policy-trial")
    thread.start()
    thread.join()
    return outcome == [True]


class IdleGuard:
    """Keeps an idle-policy process from starving: ordinary policy while its loop runs late."""

    def __init__(
        self,
        *,
        late_s: float = 0.05,
        every_s: float = 0.1,
        hold_s: float = 5.0,
        set_policy: Callable[[int], None] = set_thread_policies,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self._late_s = late_s
        self._every_s = every_s
        self._hold_s = hold_s
        self._set_policy = set_policy
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._last = (0.0, 0.0)  # wall and CPU clocks at the previous check
        self._late_at = float("-inf")
        self._timer: asyncio.TimerHandle | None = None
        self.idle = True
        """Whether the threads are at the idle policy now."""
        self.starved = 0
        """How many times the guard found the process starved and left the idle policy."""

    def tick(self, lateness_s: float, now: float, cpu_share: float = 0.0) -> None:
        """One check: the guard's timer ran `lateness_s` late at `now`, and the process used
        `cpu_share` cores (its CPU time over the wall time) since the check before."""
        if lateness_s > self._late_s and cpu_share < 0.5:
            self._late_at = now
            if self.idle:
                self._set_policy(os.SCHED_OTHER)
                self.idle = False
                self.starved += 1
                # Expected now and then on a busy host (the point of the guard): info, not a warning.
                log.info(
                    "starved at the idle CPU policy; ordinary policy until it catches up",
                    extra={"fields": {"late_ms": round(lateness_s * 1000, 1)}},
                )
        elif not self.idle and now - self._late_at >= self._hold_s:
            self._set_policy(os.SCHED_IDLE)
            self.idle = True
            log.info("caught up; back to the idle CPU policy")

    def start(self) -> None:
        """Start checking on the running event loop."""
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        self._last = (self._clock(), self._cpu_clock())
        due = self._last[0] + self._every_s
        self._timer = asyncio.get_running_loop().call_later(self._every_s, self._check, due)

    def _check(self, due: float) -> None:
        now, cpu = self._clock(), self._cpu_clock()
        wall = now - self._last[0]
        share = (cpu - self._last[1]) / wall if wall > 0 else 1.0
        try:
            self.tick(max(0.0, now - due), now, share)
        except OSError:  # a failed switch must not end the checks (the next one tries again)
            log.exception("could not switch the CPU policy")
        finally:
            self._schedule()


def set_cpu_policy(policy: str, setting: str) -> IdleGuard | None:
    """Apply `INTERLOCK_<SERVICE>_CPU_POLICY` (`normal`, the default, or `idle`) first thing in
    a service's main, so every thread it starts inherits it. Returns the guard, which
    `GrpcService.run` starts once the service serves (None at the ordinary policy). A value
    not in CPU_POLICIES fails the start with the variable's name."""
    if policy not in CPU_POLICIES:
        raise SettingsError(f"{setting}={policy!r}: not one of {', '.join(CPU_POLICIES)}")
    if policy == "normal":
        return None
    if not can_leave_idle():
        log.warning(
            "idle CPU policy refused: this process could not leave it again when starved "
            "(needs CAP_SYS_NICE or RLIMIT_NICE); running at the ordinary policy",
            extra={"fields": {"setting": setting}},
        )
        return None
    set_thread_policies(os.SCHED_IDLE)
    global _installed
    _installed = IdleGuard()
    return _installed


_installed: IdleGuard | None = None


def installed_guard() -> IdleGuard | None:
    """The guard `set_cpu_policy` installed in this process, if any; `GrpcService.run`
    starts it once the service serves and stops it when the service stops."""
    return _installed
