"""Wires trace-ingest together and runs it: `python -m interlock.services.traceingest`."""

from __future__ import annotations

from pathlib import Path

from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from interlock._idle import set_cpu_policy
from interlock._server import GrpcService, run_event_loop, set_cpu_priority
from interlock._telemetry import setup_logging, setup_tracing
from interlock.services.traceingest.adapters.budget_auth import BudgetAuthenticator
from interlock.services.traceingest.adapters.clickhouse import ClickHouseClient, EmbeddedClickHouse, HttpClickHouse
from interlock.services.traceingest.adapters.dead_letters import DeadLetterSink, KafkaDeadLetters, SpoolDeadLetters
from interlock.services.traceingest.adapters.jaeger_forwarder import JaegerForwarder
from interlock.services.traceingest.adapters.kafka_consumer import KafkaUsageConsumer
from interlock.services.traceingest.adapters.kafka_topics import TopicSpec, ensure_topics
from interlock.services.traceingest.adapters.retry import Backoff
from interlock.services.traceingest.adapters.span_writer import SpanWriter
from interlock.services.traceingest.adapters.spool_consumer import SpoolUsageConsumer
from interlock.services.traceingest.adapters.store import TraceStore
from interlock.services.traceingest.adapters.usage_ingest import UsageIngestor
from interlock.services.traceingest.api.otlp import OtlpTraceServicer
from interlock.services.traceingest.api.traceingest import SERVICE, TraceIngestServicer
from interlock.services.traceingest.api.usage_events import decode_usage_event
from interlock.services.traceingest.config import TraceIngestSettings, load_trace_ingest_settings
from interlock.spool import UsageSpool

SERVICE_NAME = "trace-ingest"


def build_trace_ingest(settings: TraceIngestSettings, *, tracer_provider: TracerProvider | None = None) -> GrpcService:
    """The trace-ingest process: gRPC server, span writer, usage consumer, ClickHouse store.

    Usage spans go to `tracer_provider`, by default the global one that setup_tracing installs.
    """
    tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("interlock.services.traceingest")
    backoff = Backoff(initial_s=settings.retry_initial_s, max_s=settings.retry_max_s)
    client: ClickHouseClient
    if settings.clickhouse_url:
        client = HttpClickHouse(settings.clickhouse_url)
    else:
        client = EmbeddedClickHouse(Path(settings.chdb_path))
    store = TraceStore(client, settings.database, max_rows=settings.max_result_rows)
    writer = SpanWriter(
        store,
        batch_size=settings.span_batch_size,
        flush_interval_s=settings.span_flush_interval_s,
        buffer_limit=settings.span_buffer_limit,
        backoff=backoff,
    )
    jaeger = (
        JaegerForwarder(
            settings.jaeger_otlp_endpoint,
            batch_size=settings.jaeger_batch_size,
            flush_interval_s=settings.jaeger_flush_interval_s,
            queue_limit=settings.jaeger_queue_limit,
            timeout_s=settings.jaeger_timeout_s,
            backoff=backoff,
        )
        if settings.jaeger_otlp_endpoint
        else None
    )
    dead_letters: DeadLetterSink
    if settings.kafka_bootstrap:
        dead_letters = KafkaDeadLetters(settings.kafka_bootstrap, settings.dlq_topic)
    else:
        dead_letters = SpoolDeadLetters(Path(settings.dlq_spool_path))
    ingestor = UsageIngestor(
        store,
        decode_usage_event,
        process_span_name=f"{settings.usage_topic} process",
        backoff=backoff,
        tracer=tracer,
        dead_letters=dead_letters,
    )
    consumer: KafkaUsageConsumer | SpoolUsageConsumer
    if settings.kafka_bootstrap:
        bootstrap = settings.kafka_bootstrap
        topics = usage_topic_specs(settings)

        async def create_topics() -> None:
            await ensure_topics(bootstrap, topics)

        consumer = KafkaUsageConsumer(
            settings.kafka_bootstrap,
            settings.usage_topic,
            settings.consumer_group,
            ingestor,
            max_records=settings.usage_batch_size,
            linger_s=settings.usage_linger_s,
            backoff=backoff,
            prepare=create_topics if settings.create_topics else None,
            receive_spans=settings.kafka_receive_spans,
        )
    else:
        consumer = SpoolUsageConsumer(
            UsageSpool(Path(settings.spool_path)),
            settings.consumer_group,
            ingestor,
            destination=settings.usage_topic,
            max_records=settings.usage_batch_size,
            poll_interval_s=settings.spool_poll_interval_s,
            backoff=backoff,
        )
    auth = BudgetAuthenticator(settings.budget_target) if settings.budget_target else None
    servicer = TraceIngestServicer(store, auth, require_api_key=settings.require_api_key)
    on_start = [store.start, writer.start, dead_letters.start, consumer.start]
    on_stop = [consumer.stop, dead_letters.stop, writer.stop, store.close]
    if jaeger is not None:
        on_start.append(jaeger.start)
        on_stop.append(jaeger.stop)
    if auth is not None:
        on_stop.append(auth.close)
    return GrpcService(
        name=SERVICE.full_name,
        host=settings.host,
        port=settings.port,
        services=[(SERVICE, servicer)],
        extra_registrations=[OtlpTraceServicer(writer, jaeger).register],
        # store.start applies pending schema migrations before anything is consumed.
        on_start=on_start,
        # The server has stopped taking calls by now: consume no more, write what is held, close.
        on_stop=on_stop,
        grace_s=settings.grace_s,
    )


def usage_topic_specs(settings: TraceIngestSettings) -> list[TopicSpec]:
    """The usage topic and its dead-letter topic, as trace-ingest creates them."""
    hour_ms = 3_600_000
    return [
        TopicSpec(
            settings.usage_topic,
            settings.usage_topic_partitions,
            settings.usage_topic_retention_hours * hour_ms,
            settings.topic_replication_factor,
        ),
        # Dead letters are few and read by people: one partition keeps them in arrival order.
        TopicSpec(
            settings.dlq_topic, 1, settings.dlq_topic_retention_hours * hour_ms, settings.topic_replication_factor
        ),
    ]


def main() -> None:
    settings = load_trace_ingest_settings()
    set_cpu_priority(settings.nice, "INTERLOCK_TRACEINGEST_NICE")
    setup_logging(SERVICE_NAME, settings.log_level)
    set_cpu_policy(settings.cpu_policy, "INTERLOCK_TRACEINGEST_CPU_POLICY")
    setup_tracing(SERVICE_NAME, settings.otlp_endpoint or None)
    run_event_loop(build_trace_ingest(settings).run())


if __name__ == "__main__":
    main()
