"""Per-rate, per-path summaries of the rounds, added latency and the highest sustained rate."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SUSTAIN_P99_ADDED_MS = 10.0
"""A rate is sustained when p99 added latency stays under this ..."""
SUSTAIN_MAX_ERROR_RATE = 0.01
"""... errors stay under 1% ..."""
SUSTAIN_MIN_ACHIEVED = 0.95
"""... and the achieved rate is at least 95% of the offered one."""


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0-100) of unsorted values; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least 1
    return ordered[int(rank) - 1]


@dataclass
class Round:
    """One run of one path at one rate, with what the gateway's processes used during it."""

    path: str
    rate: float
    index: int
    seconds: float
    ok: int
    errors: int
    error_kinds: dict[str, int]
    window_s: float
    """From the first request sent to the last one answered."""
    latencies_ms: list[float] = field(repr=False)
    cpu_s: float = 0.0
    """CPU seconds of all the gateway's processes during the round."""
    router_cpu_s: float = 0.0
    service_cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds of each of the gateway's named processes (Interlock: its four services)."""
    peak_rss_mb: float = 0.0
    """Sum over the gateway's processes of each one's peak RSS during the round."""
    router_peak_rss_mb: float = 0.0


@dataclass
class PathAtRate:
    """The rounds of one path at one rate, merged."""

    path: str
    rate: float
    requests: int
    errors: int
    error_rate: float
    achieved_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    cpu_pct: float
    """CPU of the gateway's processes, in % of one core, over the rounds' wall time."""
    router_cpu_pct: float
    peak_rss_mb: float
    router_peak_rss_mb: float
    added_p50_ms: float | None = None
    added_p90_ms: float | None = None
    added_p99_ms: float | None = None
    top_errors: dict[str, int] = field(default_factory=dict)
    cpu_ms_per_call: dict[str, float] = field(default_factory=dict)
    """CPU milliseconds per answered call, by process of the gateway (where it names several)."""
    round_p99_ms: list[float] = field(default_factory=list)
    """p99 of each round on its own, in the order run (how much the merged p99 owes to one)."""

    @property
    def overloaded(self) -> bool:
        """So far past its limit that higher rates would only measure a backlog."""
        return (
            self.error_rate > 0.05
            or self.achieved_rps < 0.8 * self.rate
            or not self.p99_ms < 1000  # NaN (nothing succeeded) counts
        )

    def sustained(self) -> bool:
        added = self.added_p99_ms
        return (
            added is not None
            and added < SUSTAIN_P99_ADDED_MS
            and self.error_rate < SUSTAIN_MAX_ERROR_RATE
            and self.achieved_rps >= SUSTAIN_MIN_ACHIEVED * self.rate
        )

    def carried(self) -> bool:
        """Kept up with the rate, whatever the latency short of a second: a throughput figure."""
        return (
            self.error_rate < SUSTAIN_MAX_ERROR_RATE
            and self.achieved_rps >= SUSTAIN_MIN_ACHIEVED * self.rate
            and self.p99_ms < 1000
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def merge(rounds: list[Round]) -> PathAtRate:
    first = rounds[0]
    latencies = [lat for r in rounds for lat in r.latencies_ms]
    ok = sum(r.ok for r in rounds)
    errors = sum(r.errors for r in rounds)
    window = sum(r.window_s for r in rounds)
    wall = sum(r.seconds for r in rounds)
    kinds: dict[str, int] = {}
    for r in rounds:
        for kind, n in r.error_kinds.items():
            kinds[kind] = kinds.get(kind, 0) + n
    top = dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:3])
    return PathAtRate(
        path=first.path,
        rate=first.rate,
        requests=ok + errors,
        errors=errors,
        error_rate=errors / (ok + errors) if ok + errors else 1.0,
        achieved_rps=ok / window if window > 0 else 0.0,
        p50_ms=percentile(latencies, 50),
        p90_ms=percentile(latencies, 90),
        p99_ms=percentile(latencies, 99),
        cpu_pct=100 * sum(r.cpu_s for r in rounds) / wall if wall else 0.0,
        router_cpu_pct=100 * sum(r.router_cpu_s for r in rounds) / wall if wall else 0.0,
        peak_rss_mb=max(r.peak_rss_mb for r in rounds),
        router_peak_rss_mb=max(r.router_peak_rss_mb for r in rounds),
        top_errors=top,
        cpu_ms_per_call={
            name: 1000 * sum(r.service_cpu_s.get(name, 0.0) for r in rounds) / ok
            for name in sorted({n for r in rounds for n in r.service_cpu_s})
        }
        if ok
        else {},
        round_p99_ms=[percentile(r.latencies_ms, 99) for r in rounds],
    )


def add_baseline(row: PathAtRate, direct: PathAtRate) -> None:
    """Added latency: this path's percentile minus the direct path's, both from the same rate step."""
    row.added_p50_ms = row.p50_ms - direct.p50_ms
    row.added_p90_ms = row.p90_ms - direct.p90_ms
    row.added_p99_ms = row.p99_ms - direct.p99_ms


def highest_sustained(rows: list[PathAtRate], path: str) -> float | None:
    """The highest measured rate at which the path met the sustain criteria."""
    rates = [r.rate for r in rows if r.path == path and r.sustained()]
    return max(rates) if rates else None


def highest_carried(rows: list[PathAtRate], path: str) -> float | None:
    """The highest measured rate the path kept up with (errors < 1%, >= 95% achieved, p99 < 1 s)."""
    rates = [r.rate for r in rows if r.path == path and r.carried()]
    return max(rates) if rates else None
