"""A service's `INTERLOCK_<SERVICE>_NICE`: the process, and every thread it starts (gRPC,
the ledger's, the span exporter's), runs at that niceness; a value out of range fails the
start with the variable's name. The CPU policy likewise, and the router's
`INTERLOCK_ROUTER_CPUS`: every thread bound to the CPUs listed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from serving import serving

from interlock._server import parse_cpu_list, set_cpu_affinity
from interlock._settings import SettingsError
from interlock.devservers import free_port

ALLOWED_AT_IMPORT = frozenset(os.sched_getaffinity(0))


def thread_niceness(pid: int) -> dict[str, int]:
    """Thread name -> niceness, from /proc (field 19 of each thread's stat)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[f"{name}/{task.name}"] = int(fields[16])
    return out


def serving_budget(tmp_path: Path, settings: dict[str, str]) -> contextlib.AbstractContextManager[int]:
    """A budget service process with `settings`, yielded (its pid) once it serves."""
    spools = {
        "INTERLOCK_BUDGET_DB_PATH": str(tmp_path / "ledger.db"),
        "INTERLOCK_BUDGET_SPOOL_PATH": str(tmp_path / "usage.db"),
        "INTERLOCK_BUDGET_ALERTS_SPOOL_PATH": str(tmp_path / "alerts.db"),
    }
    return serving("budget", {**spools, **settings}, tmp_path / "budget.log")


def test_the_budget_service_and_all_its_threads_run_at_the_niceness_set(tmp_path: Path) -> None:
    with serving_budget(tmp_path, {"INTERLOCK_BUDGET_NICE": "7"}) as pid:
        niceness = thread_niceness(pid)
        assert len(niceness) > 3  # gRPC's threads and the others, not only the main one
        assert set(niceness.values()) == {7}, niceness


def test_a_niceness_out_of_range_fails_the_start_naming_the_setting(tmp_path: Path) -> None:
    env = {**os.environ, "INTERLOCK_RATELIMIT_PORT": str(free_port()), "INTERLOCK_RATELIMIT_NICE": "25"}
    done = subprocess.run(
        [sys.executable, "-m", "interlock.services.ratelimit"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode != 0
    assert b"INTERLOCK_RATELIMIT_NICE=25: niceness is not between -20 and 19" in done.stderr


def thread_policies(pid: int) -> dict[str, int]:
    """Thread name -> scheduling policy, from /proc (field 41 of each thread's stat)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        out[f"{name}/{task.name}"] = int(stat[stat.rindex(")") + 2 :].split()[38])
    return out


def test_the_idle_policy_puts_every_thread_of_the_budget_service_at_sched_idle(tmp_path: Path) -> None:
    settings = {"INTERLOCK_BUDGET_NICE": "10", "INTERLOCK_BUDGET_CPU_POLICY": "idle"}
    with serving_budget(tmp_path, settings) as pid:
        policies = thread_policies(pid)
        assert len(policies) > 3
        # Started at idle, and serving (its own health checks answered) without starving.
        assert set(policies.values()) == {os.SCHED_IDLE}, policies
        assert set(thread_niceness(pid).values()) == {10}


def test_an_unknown_cpu_policy_fails_the_start_naming_the_setting() -> None:
    env = {
        **os.environ,
        "INTERLOCK_TRACEINGEST_PORT": str(free_port()),
        "INTERLOCK_TRACEINGEST_CPU_POLICY": "lazy",
    }
    done = subprocess.run(
        [sys.executable, "-m", "interlock.services.traceingest"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode != 0
    assert b"INTERLOCK_TRACEINGEST_CPU_POLICY='lazy': not one of normal, idle" in done.stderr


def thread_cpus(pid: int) -> dict[str, frozenset[int]]:
    """Thread name -> the CPUs it may run on."""
    return {name: frozenset(os.sched_getaffinity(int(name.rpartition("/")[2]))) for name in thread_niceness(pid)}


def test_cpu_lists_read_as_taskset_writes_them() -> None:
    assert parse_cpu_list("1", "X") == {1}
    assert parse_cpu_list("0-3", "X") == {0, 1, 2, 3}
    assert parse_cpu_list("0, 2-3,5", "X") == {0, 2, 3, 5}
    for bad in ("", "one", "3-1", "-1", "1-", "0,,1"):
        with pytest.raises(SettingsError, match=r"X=.*not a CPU list"):
            parse_cpu_list(bad, "X")


def test_cpus_outside_the_allowed_set_fail_naming_the_setting() -> None:
    outside = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(SettingsError, match=rf"INTERLOCK_ROUTER_CPUS='{outside}': CPU {outside} not among"):
        set_cpu_affinity(str(outside), "INTERLOCK_ROUTER_CPUS")


def test_the_router_and_every_thread_it_starts_run_on_the_cpus_set(tmp_path: Path) -> None:
    cpu = max(os.sched_getaffinity(0))
    with serving("router", {"INTERLOCK_ROUTER_CPUS": str(cpu)}, tmp_path / "router.log") as pid:
        cpus = thread_cpus(pid)
        assert len(cpus) > 3  # gRPC core's threads too, not only the main one
        assert set(cpus.values()) == {frozenset({cpu})}, cpus


def test_without_the_setting_the_router_keeps_every_cpu_it_was_given(tmp_path: Path) -> None:
    set_cpu_affinity("", "INTERLOCK_ROUTER_CPUS")  # empty: nothing changes
    assert os.sched_getaffinity(0) == ALLOWED_AT_IMPORT
