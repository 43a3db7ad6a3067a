"""UsageEvent protobuf (a Kafka or spool record value) to the stored usage row."""

from __future__ import annotations

from interlock.services.traceingest.domain import UsageRecord
from interlock.usage.v1.usage_pb2 import UsageEvent


def usage_record_from_event(event: UsageEvent) -> UsageRecord:
    """The row for one UsageEvent; an unset occurred_at stays the epoch so every copy matches."""
    return UsageRecord(
        event_id=event.event_id,
        org=event.org,
        project=event.project,
        developer=event.developer,
        api_key_id=event.api_key_id,
        provider=event.provider,
        model=event.model,
        input_tokens=event.input_tokens,
        output_tokens=event.output_tokens,
        cost_nanos=event.cost_nanos,
        status=event.status,
        occurred_at_ms=event.occurred_at.ToMilliseconds(),
        trace_id=event.trace_id,
        run_id=event.run_id,
        agent=event.agent,
        cached_input_tokens=event.cached_input_tokens,
        reasoning_tokens=event.reasoning_tokens,
        cache_write_tokens=event.cache_write_tokens,
        config_version=event.config_version,
        latency_ms=event.latency_ms,
        attempt=event.attempt,
        # Producers before versioning leave it unset: they wrote layout 1.
        schema_version=event.schema_version or 1,
        provider_attempts=event.provider_attempts,
        # Producers before request ids used them as event ids.
        request_id=event.request_id or event.event_id,
    )


def decode_usage_event(value: bytes) -> UsageRecord:
    """Parse a serialized UsageEvent (raises google.protobuf.message.DecodeError)."""
    return usage_record_from_event(UsageEvent.FromString(value))
