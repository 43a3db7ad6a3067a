"""Rate-limiter settings, from `INTERLOCK_RATELIMIT_*` environment variables."""

from __future__ import annotations

from dataclasses import dataclass

from interlock._settings import load_settings


@dataclass(frozen=True)
class RateLimitSettings:
    host: str = "127.0.0.1"
    """Interface the gRPC server binds."""
    port: int = 50052
    """gRPC port; 0 picks a free one."""
    limits_path: str = ""
    """YAML limits file (Envoy-style domains and descriptors); empty means no limits."""
    redis_url: str = ""
    """Redis shared by replicas, e.g. redis://127.0.0.1:6379/0; empty keeps counters in memory."""
    reload_interval_s: float = 1.0
    """How often the limits file is checked for changes (hot reload)."""
    overrides_refresh_s: float = 1.0
    """How often runtime overrides set through another replica are read from Redis."""
    lease_fill: float = 0.5
    """Leases (LeaseHits) are granted only while every enforced counter they charge stays
    within this share of its limit; past it, callers ask per call, and the last hits of a
    window go exactly to whoever asks first."""
    max_lease_ms: int = 5000
    """Longest lease granted; a lease is also at most a twentieth of its shortest window."""
    otlp_endpoint: str = ""
    """OTLP/gRPC endpoint for spans; empty disables export."""
    log_level: str = "info"
    """Log level of the JSON logs on stderr."""
    nice: int = 0
    """Scheduling niceness (-20 to 19) the process sets at start; 0 leaves it alone. On a host
    shared with the router, a higher one than the router's lets calls take the CPU first."""
    grace_s: float = 10.0
    """Time in-flight calls get to finish after SIGTERM."""


def load() -> RateLimitSettings:
    return load_settings(RateLimitSettings, "INTERLOCK_RATELIMIT_")
