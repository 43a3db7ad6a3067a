"""Trace-ingest's pure logic: cost query validation, trace ids, secret redaction, usage rows."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from interlock.costs_cli import day_over_day, render_chart_html
from interlock.errors import InvalidArgumentError, PermissionDeniedError
from interlock.services.traceingest.adapters.migrations import load_migrations
from interlock.services.traceingest.domain import (
    ALLOWED_DIMENSIONS,
    MAX_SCHEMA_VERSION,
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
    assert set(ALLOWED_DIMENSIONS) == {
        "org",
        "project",
        "developer",
        "provider",
        "model",
        "agent",
        "run_id",
        "day",
        "hour",
    }
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


# cost analytics: tenant scope, schema versions, migrations, day-over-day, chart


def test_a_tenant_scope_forces_its_project_and_refuses_another() -> None:
    query = CostQuery.parse(["model"], None, "", "")
    assert (query.scoped_to("acme", "alpha").org, query.scoped_to("acme", "alpha").project) == ("acme", "alpha")
    assert CostQuery.parse([], None, "acme", "alpha").scoped_to("acme", "alpha").project == "alpha"
    with pytest.raises(PermissionDeniedError):
        CostQuery.parse([], None, "", "beta").scoped_to("acme", "alpha")
    with pytest.raises(PermissionDeniedError):
        CostQuery.parse([], None, "globex", "").scoped_to("acme", "alpha")


def test_cost_query_checks_range_and_limit() -> None:
    since = datetime(2025, 10, 9, tzinfo=UTC)
    with pytest.raises(InvalidArgumentError) as bad_until:
        CostQuery.parse([], since, "", "", until=since)
    assert bad_until.value.field == "until"
    with pytest.raises(InvalidArgumentError) as bad_limit:
        CostQuery.parse([], None, "", "", limit=-1)
    assert bad_limit.value.field == "limit"


def test_usage_record_from_a_newer_producer_or_with_broken_sums_is_refused() -> None:
    base = UsageRecord("e1", "acme", "p", "d", "k", "openai", "m", 10, 5, 100, "ok", 0, "", "", "")
    assert base.problems() == []
    assert replace(base, schema_version=MAX_SCHEMA_VERSION + 1).problems()
    assert replace(base, cached_input_tokens=11).problems() == ["cached_input_tokens exceeds input_tokens"]
    assert replace(base, project="").problems() == ["org and project must be set"]


def test_migration_files_are_numbered_in_order_and_split_into_statements() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    for m in migrations:
        statements = m.statements("analytics")
        assert statements and all("{db}" not in s and not s.endswith(";") for s in statements)
        assert all("analytics." in s for s in statements)


def test_day_over_day_compares_each_group_with_its_previous_day() -> None:
    rows = [
        {"day": "2025-10-01", "project": "a", "cost_nanos": 1_000_000_000},
        {"day": "2025-10-02", "project": "a", "cost_nanos": 1_500_000_000},
        {"day": "2025-10-02", "project": "b", "cost_nanos": 10},
    ]
    changes = day_over_day(rows, ["project"])
    assert [(c["day"], c["project"], c["change_pct"]) for c in changes] == [
        ("2025-10-01", "a", "new"),
        ("2025-10-02", "a", "+50.0%"),
        ("2025-10-02", "b", "new"),
    ]
    assert changes[1]["change_usd"] == "0.5"


def test_chart_is_self_contained_svg_in_html() -> None:
    page = render_chart_html("cost <of> p", [("2025-10-01", 5), ("2025-10-02", 10)])
    assert page.startswith("<!doctype html>") and "<svg" in page and "cost &lt;of&gt; p" in page
    assert page.count("<rect") == 2 and "http" not in page.replace("http://www.w3.org/2000/svg", "")
