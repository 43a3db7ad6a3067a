"""Recorded LLM calls of agent runs, as trace-ingest takes them from the router's spans.

The router puts a call's redacted request and answer on its span (OpenTelemetry GenAI
`gen_ai.input.messages` / `gen_ai.output.messages`); trace-ingest stores those bodies as a
`run_calls` row, with their own retention, and the span without them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from interlock import recording
from interlock.errors import InvalidArgumentError
from interlock.services.traceingest.domain.spans import SpanRecord

_MAX_RUN_ID = 128


@dataclass(frozen=True)
class RunCall:
    """One recorded call; one row of `run_calls`."""

    run_id: str
    trace_id: str
    span_id: str
    org: str
    project: str
    agent: str
    step: str
    request_id: str
    request_model: str
    response_model: str
    provider: str
    request_json: str
    """`{"messages": [...], "params": {...}}`, redacted by the router."""
    response_json: str
    """`{"messages": [...]}` (one assistant message), redacted by the router; `{}` for a failed call."""
    request_digest: str
    message_digests: tuple[str, ...]
    input_tokens: int
    output_tokens: int
    cost_nanos: int
    latency_ms: float
    status: str
    """`OK` or `ERROR`."""
    error: str
    config_version: str
    attempts: int
    start_time_ns: int


@dataclass(frozen=True)
class RunSummary:
    """A run, summed over its recorded calls."""

    run_id: str
    org: str
    project: str
    trace_ids: tuple[str, ...]
    agents: tuple[str, ...]
    calls: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost_nanos: int
    started_at_ns: int
    ended_at_ns: int


def parse_run_id(value: str) -> str:
    if not value or len(value) > _MAX_RUN_ID:
        raise InvalidArgumentError(f"must be 1-{_MAX_RUN_ID} characters", field="run_id")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def _json_or(text: str, default: object) -> object:
    try:
        return json.loads(text) if text else default
    except ValueError:
        return default


def run_call_from_span(span: SpanRecord) -> RunCall | None:
    """The recorded call a router span carries, or None for any other span."""
    a = span.attributes
    run_id = a.get(recording.RUN_ID_ATTRIBUTE, "")
    if not run_id or recording.INPUT_MESSAGES_ATTRIBUTE not in a:
        return None
    digests = _json_or(a.get(recording.MESSAGE_DIGESTS_ATTRIBUTE, ""), [])
    request = {
        "messages": _json_or(a.get(recording.INPUT_MESSAGES_ATTRIBUTE, ""), []),
        "params": _json_or(a.get(recording.REQUEST_PARAMS_ATTRIBUTE, ""), {}),
    }
    output = a.get(recording.OUTPUT_MESSAGES_ATTRIBUTE, "")
    response = {"messages": _json_or(output, [])} if output else {}
    return RunCall(
        run_id=run_id,
        trace_id=span.trace_id,
        span_id=span.span_id,
        org=a.get("interlock.org", ""),
        project=a.get("interlock.project", ""),
        agent=a.get(recording.AGENT_ATTRIBUTE, ""),
        step=a.get(recording.STEP_ATTRIBUTE, ""),
        request_id=a.get("interlock.request_id", ""),
        request_model=a.get("gen_ai.request.model", ""),
        response_model=a.get("gen_ai.response.model", ""),
        provider=a.get("gen_ai.provider.name", ""),
        request_json=json.dumps(request, ensure_ascii=False, separators=(",", ":")),
        response_json=json.dumps(response, ensure_ascii=False, separators=(",", ":")),
        request_digest=a.get(recording.REQUEST_DIGEST_ATTRIBUTE, ""),
        message_digests=tuple(str(d) for d in digests) if isinstance(digests, list) else (),
        input_tokens=_int(a.get("gen_ai.usage.input_tokens", "")),
        output_tokens=_int(a.get("gen_ai.usage.output_tokens", "")),
        cost_nanos=_int(a.get("interlock.cost_nanos", "")),
        latency_ms=max(0, span.end_time_ns - span.start_time_ns) / 1e6,
        status="ERROR" if span.status_code == "ERROR" or not output else "OK",
        error=span.status_message,
        config_version=a.get("interlock.config_version", ""),
        attempts=_int(a.get("interlock.attempts", "")),
        start_time_ns=span.start_time_ns,
    )


def without_bodies(span: SpanRecord) -> SpanRecord:
    """`span` without request and answer bodies (they are stored in `run_calls`)."""
    if not any(k in span.attributes for k in recording.BODY_ATTRIBUTES):
        return span
    kept = {k: v for k, v in span.attributes.items() if k not in recording.BODY_ATTRIBUTES}
    return replace(span, attributes=kept)
