"""Wires trace-ingest together and runs it: `python -m interlock.services.traceingest`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from interlock._server import GrpcService
from interlock._telemetry import setup_logging, setup_tracing
from interlock.services.traceingest.adapters.clickhouse import ClickHouseClient, EmbeddedClickHouse, HttpClickHouse
from interlock.services.traceingest.adapters.kafka_consumer import KafkaUsageConsumer
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
    consumer: KafkaUsageConsumer | SpoolUsageConsumer
    if settings.kafka_bootstrap:
        consumer = KafkaUsageConsumer(
            settings.kafka_bootstrap,
            settings.usage_topic,
            settings.consumer_group,
            UsageIngestor(
                store,
                decode_usage_event,
                process_span_name=f"{settings.usage_topic} process",
                backoff=backoff,
                tracer=tracer,
            ),
            max_records=settings.usage_batch_size,
            backoff=backoff,
        )
    else:
        consumer = SpoolUsageConsumer(
            UsageSpool(Path(settings.spool_path)),
            settings.consumer_group,
            UsageIngestor(
                store,
                decode_usage_event,
                process_span_name=f"{settings.usage_topic} process",
                backoff=backoff,
                tracer=tracer,
            ),
            destination=settings.usage_topic,
            max_records=settings.usage_batch_size,
            poll_interval_s=settings.spool_poll_interval_s,
            backoff=backoff,
        )
    return GrpcService(
        name=SERVICE.full_name,
        host=settings.host,
        port=settings.port,
        services=[(SERVICE, TraceIngestServicer(store))],
        extra_registrations=[OtlpTraceServicer(writer).register],
        on_start=[store.start, writer.start, consumer.start],
        # The server has stopped taking calls by now: consume no more, write what is held, close.
        on_stop=[consumer.stop, writer.stop, store.close],
        grace_s=settings.grace_s,
    )


def main() -> None:
    settings = load_trace_ingest_settings()
    setup_logging(SERVICE_NAME, settings.log_level)
    setup_tracing(SERVICE_NAME, settings.otlp_endpoint or None)
    asyncio.run(build_trace_ingest(settings).run())


if __name__ == "__main__":
    main()
