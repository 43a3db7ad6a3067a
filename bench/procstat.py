"""CPU time and resident memory of gateway processes, from /proc (Linux).

A gateway is a set of root processes plus every descendant they start (worker
processes of a proxy, for instance), looked up afresh at each reading. Peak RSS is the
kernel's own high-water mark (VmHWM), which `reset_peak` resets between rounds by
writing 5 to /proc/PID/clear_refs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces), from its closing paren.
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(roots: Iterable[int]) -> list[int]:
    """The roots that are alive and all their descendants."""
    children = _children_map()
    found: list[int] = []
    stack = [pid for pid in roots if Path(f"/proc/{pid}").exists()]
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process (its reaped children included)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    # utime, stime, cutime, cstime are fields 14-17 of stat(5); 3 is the first after the name.
    return sum(int(v) for v in fields[11:15]) / _TICKS


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmHWM") / 1024


def reset_peak(pid: int) -> None:
    """Start a new peak-RSS window for the process (needs the right to write its clear_refs)."""
    # Not ours to reset: the peak then covers the process's whole life.
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


class ProcessGroup:
    """Named root processes of one gateway; readings sum each root's whole tree."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = dict(roots)

    def pids(self, name: str | None = None) -> list[int]:
        roots = [self.roots[name]] if name else list(self.roots.values())
        return process_tree(roots)

    def cpu_seconds(self, name: str | None = None) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids(name))

    def rss_mb(self, name: str | None = None) -> float:
        return sum(rss_mb(pid) for pid in self.pids(name))

    def peak_rss_mb(self, name: str | None = None) -> float:
        return sum(peak_rss_mb(pid) for pid in self.pids(name))

    def reset_peak(self) -> None:
        for pid in self.pids():
            reset_peak(pid)

    def alive(self) -> bool:
        return all(Path(f"/proc/{pid}").exists() for pid in self.roots.values())
