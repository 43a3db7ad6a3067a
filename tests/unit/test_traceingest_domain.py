"""Trace-ingest's pure logic: cost query validation, trace ids, secret redaction, usage rows."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from interlock.errors import InvalidArgumentError
from interlock.services.traceingest.domain import (
    ALLOWED_DIMENSIONS,
    REDACTED,
    CostQuery,
    Dimension,
    UsageRecord,
    is_secret_key,
    parse_trace_id,
    redact_attributes,
)


def test_cost_query_keeps_allowed_dimensions_in_request_order() -> None:
    since = datetime(2025, 1, 1, tzinfo=UTC)
    query = CostQuery.parse(["model", "org", "run_id"], since, "acme", "chat")
    assert query.group_by == (Dimension.MODEL, Dimension.ORG, Dimension.RUN_ID)
    assert (query.since, query.org, query.project) == (since, "acme", "chat")


def test_every_documented_dimension_is_allowed() -> None:
    assert set(ALLOWED_DIMENSIONS) == {"org", "project", "developer", "provider", "model", "agent", "run_id"}
    assert CostQuery.parse(list(ALLOWED_DIMENSIONS), None, "", "").group_by == tuple(Dimension)


@pytest.mark.parametrize(
    "bad",
    ["api_key_id", "cost_nanos", "Org", "org; DROP TABLE usage_events", "", "org) OR 1=1 --"],
)
def test_unknown_dimension_is_invalid_argument_naming_group_by(bad: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        CostQuery.parse(["org", bad], None, "", "")
    assert caught.value.field == "group_by"
    assert caught.value.metadata["index"] == "1"


def test_repeated_dimension_is_invalid() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        CostQuery.parse(["org", "org"], None, "", "")
    assert caught.value.field == "group_by"


def test_no_dimensions_means_one_total() -> None:
    assert CostQuery.parse([], None, "", "").group_by == ()


def test_naive_since_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        CostQuery.parse([], datetime(2025, 1, 1), "", "")
    assert caught.value.field == "since"


def test_trace_id_must_be_32_lowercase_hex() -> None:
    good = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert parse_trace_id(good) == good
    for bad in ["", good.upper(), good[:-1], good + "0", "z" * 32, "0" * 32, f" {good[1:]}", "' OR 1=1 --"]:
        with pytest.raises(InvalidArgumentError) as caught:
            parse_trace_id(bad)
        assert caught.value.field == "trace_id"


@pytest.mark.parametrize(
    "key",
    [
        "authorization",
        "Authorization",
        "http.request.header.authorization",
        "proxy-authorization",
        "x-api-key",
        "X-Api-Key",
        "api_key",
        "openai.api-key",
        "cookie",
        "http.response.header.set-cookie",
        "db.password",
        "client_secret",
        "oauth.access_token",
        "github.token",
        "aws.credentials",
    ],
)
def test_secret_keys_are_recognised(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "interlock.api_key_id",
        "messaging.kafka.message.key",
        "http.request.method",
        "service.name",
        "rpc.method",
    ],
)
def test_ordinary_keys_are_kept(key: str) -> None:
    assert not is_secret_key(key)


def test_redaction_keeps_the_key_and_hides_the_value() -> None:
    attributes = {
        "http.request.header.authorization": "Bearer sk-live-abc",
        "x-api-key": "abc123",
        "note": "Bearer eyJhbGciOi",
        "prompt": "my key is sk-proj-ABCDEFGHIJKLMNOPQRSTUV please",
        "plan": "basic tier",
        "gen_ai.usage.input_tokens": "12",
    }
    assert redact_attributes(attributes) == {
        "http.request.header.authorization": REDACTED,
        "x-api-key": REDACTED,
        "note": REDACTED,
        "prompt": REDACTED,
        "plan": "basic tier",
        "gen_ai.usage.input_tokens": "12",
    }


def _usage(**changes: object) -> UsageRecord:
    record = UsageRecord(
        event_id="req-1",
        org="acme",
        project="chat",
        developer="dev",
        api_key_id="key_1",
        provider="openai",
        model="gpt-4o-mini",
        input_tokens=10,
        output_tokens=5,
        cost_nanos=1234,
        status="ok",
        occurred_at_ms=1_700_000_000_000,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        run_id="",
        agent="",
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def test_valid_usage_record_has_no_problems() -> None:
    assert _usage().problems() == []


def test_usage_record_without_event_id_or_with_negative_counts_is_refused() -> None:
    assert _usage(event_id="").problems() == ["event_id is empty"]
    assert _usage(cost_nanos=-1, input_tokens=-2).problems() == ["input_tokens is negative", "cost_nanos is negative"]
