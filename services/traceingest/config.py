"""Trace-ingest settings, read from `INTERLOCK_TRACEINGEST_*` environment variables."""

from __future__ import annotations

from dataclasses import dataclass

from interlock._settings import load_settings

ENV_PREFIX = "INTERLOCK_TRACEINGEST_"


@dataclass(frozen=True)
class TraceIngestSettings:
    """Everything trace-ingest can be told; every field has a working local default."""

    host: str = "127.0.0.1"
    """Address the gRPC server (TraceIngestService and OTLP TraceService) listens on."""
    port: int = 50054
    """gRPC port; 0 picks a free one."""
    clickhouse_url: str = ""
    """ClickHouse HTTP URL (`http://user:password@host:8123`); empty runs ClickHouse in-process (chdb)."""
    chdb_path: str = "var/chdb"
    """Data directory of the in-process ClickHouse, used when `clickhouse_url` is empty."""
    database: str = "interlock"
    """ClickHouse database holding `usage_events` and `spans`; created if missing."""
    kafka_bootstrap: str = ""
    """Kafka bootstrap servers (`host:port,...`); empty reads usage events from the local spool."""
    usage_topic: str = "interlock.usage.v1"
    """Kafka topic of usage events."""
    dlq_topic: str = "interlock.usage.v1.dlq"
    """Kafka topic that usage records which can never be stored go to, with the reason in headers."""
    create_topics: bool = True
    """Create the usage and dead-letter topics at start when missing (needs topic-create rights)."""
    usage_topic_partitions: int = 6
    """Partitions of a usage topic created here; events are keyed by org/project."""
    usage_topic_retention_hours: int = 168
    """Retention of a usage topic created here; long enough to replay a week of outage."""
    dlq_topic_retention_hours: int = 720
    """Retention of a dead-letter topic created here."""
    topic_replication_factor: int = 1
    """Replication factor of topics created here (3 on a production cluster)."""
    dlq_spool_path: str = "var/spool/usage.dlq.db"
    """Dead letters in embedded mode: a spool file (same format as the usage spool)."""
    budget_target: str = "127.0.0.1:50053"
    """Budget service that checks the API keys QueryCosts callers send; empty: keyed calls are refused."""
    require_api_key: bool = False
    """Refuse QueryCosts without an API key (keyless calls are operators' calls otherwise)."""
    consumer_group: str = "interlock-trace-ingest"
    """Kafka consumer group, and the spool's consumer group name."""
    spool_path: str = "var/spool/usage.db"
    """The local usage spool (SQLite file) budget appends to; used when `kafka_bootstrap` is empty."""
    usage_batch_size: int = 5000
    """Most usage events stored with one INSERT (a poll takes what is there, up to this many)."""
    usage_linger_s: float = 1.0
    """How long a short batch of usage events from Kafka keeps fetching before its INSERT: an
    event waits at most this long, and a trickle is stored in about one INSERT a second, not
    one per fetch (each INSERT writes a part to usage_events and to both rollups; ClickHouse
    advises about one INSERT a second). A full batch (`usage_batch_size`) goes at once; 0: none."""
    kafka_receive_spans: bool = True
    """Keep the aiokafka instrumentation's receive span per usage record; off saves about 40% of
    trace-ingest's CPU per event, and every record keeps its processing span (docs/BENCHMARKS.md)."""
    spool_poll_interval_s: float = 1.0
    """How often the spool is read while it holds less than a full batch: an event waits at most
    this long, and one INSERT stores what arrived meanwhile (each INSERT costs the embedded
    ClickHouse engine milliseconds of CPU, whatever its size)."""
    span_batch_size: int = 1000
    """Spans written with one INSERT; a full batch is written at once."""
    span_flush_interval_s: float = 0.2
    """Longest a span waits in the buffer before it is written."""
    span_buffer_limit: int = 100_000
    """Spans held while ClickHouse is down; beyond it Export answers UNAVAILABLE so exporters retry."""
    retry_initial_s: float = 0.2
    """First wait after a failed ClickHouse write; doubles per failure."""
    retry_max_s: float = 5.0
    """Longest wait between ClickHouse write retries."""
    max_result_rows: int = 10_000
    """Most rows one QueryCosts or GetTrace answer returns."""
    otlp_endpoint: str = ""
    """Where trace-ingest exports its own spans (OTLP/gRPC, e.g. its own address); empty: not exported."""
    jaeger_otlp_endpoint: str = ""
    """Jaeger's OTLP/gRPC receiver (`host:port`) that every stored span is forwarded to; empty: none."""
    jaeger_queue_limit: int = 20_000
    """Spans held for Jaeger while it is slow or down; beyond it spans are dropped for Jaeger only (logged)."""
    jaeger_batch_size: int = 1000
    """Most spans forwarded to Jaeger in one Export call."""
    jaeger_flush_interval_s: float = 0.2
    """Longest a span waits before it is forwarded to Jaeger."""
    jaeger_timeout_s: float = 5.0
    """Deadline of one Export call to Jaeger; a failed call is retried with backoff."""
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
    """How long in-flight calls may run after a stop signal."""


def load_trace_ingest_settings() -> TraceIngestSettings:
    """Settings from the environment (`INTERLOCK_TRACEINGEST_PORT=50054` etc.)."""
    return load_settings(TraceIngestSettings, ENV_PREFIX)
