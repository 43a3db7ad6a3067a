"""Budget service settings, from `INTERLOCK_BUDGET_*` environment variables."""

from __future__ import annotations

from dataclasses import dataclass

from interlock._settings import load_settings


@dataclass(frozen=True)
class BudgetSettings:
    host: str = "127.0.0.1"
    """Interface the gRPC server binds."""
    port: int = 50053
    """gRPC port; 0 picks a free one."""
    db_path: str = "var/budget/ledger.db"
    """SQLite ledger file (keys, budgets, reservations, settled usage, outbox); used when no database_url."""
    database_url: str = ""
    """PostgreSQL URL (`postgresql://user@host:port/db`) of a ledger shared by budget replicas; empty: SQLite."""
    kafka_bootstrap: str = ""
    """Kafka bootstrap servers for usage events; empty means the local spool."""
    usage_topic: str = "interlock.usage.v1"
    """Kafka topic of usage events."""
    alerts_topic: str = "interlock.alerts.v1"
    """Kafka topic of budget alert events."""
    spool_path: str = "var/spool/usage.db"
    """Local durable spool file, used when no Kafka is configured."""
    alerts_spool_path: str = "var/spool/alerts.db"
    """Local durable spool of alert events, used when no Kafka is configured."""
    publish_linger_s: float = 0.02
    """After a commit, how long usage events wait for others to leave in the same publish
    (one spool transaction or Kafka round trip for all of them); 0: publish at once."""
    reservation_ttl_s: float = 120.0
    """Default life of a reservation whose caller never commits or releases it."""
    lease_ttl_s: float = 30.0
    """Default life of a router's budget lease that is not renewed (its holder died)."""
    lease_max_share: float = 0.25
    """Largest share of a budget's remaining room one lease change may take; leases shrink as
    a budget runs low, so little money sits unused in leases near its end."""
    expire_interval_s: float = 1.0
    """How often reservations past their life are freed."""
    otlp_endpoint: str = ""
    """OTLP/gRPC endpoint for spans (trace-ingest), e.g. 127.0.0.1:50054; empty disables export."""
    log_level: str = "info"
    """Log level of the JSON logs on stderr."""
    nice: int = 0
    """Scheduling niceness (-20 to 19) the process sets at start; 0 leaves it alone. On a host
    shared with the router, a higher one than the router's lets calls take the CPU first."""
    cpu_policy: str = "normal"
    """`idle`: the process runs under Linux's SCHED_IDLE, taking a core only when no ordinary
    process wants one, and goes back to the ordinary policy (at `nice`) whenever it is starved
    (its event loop 50 ms late while it got under half a core) until it has caught up for 5 s
    (interlock._idle). For a host shared with
    the router; refused with a warning where the process could not leave idle again."""
    grace_s: float = 10.0
    """Time in-flight calls get to finish after SIGTERM."""


def load() -> BudgetSettings:
    return load_settings(BudgetSettings, "INTERLOCK_BUDGET_")
