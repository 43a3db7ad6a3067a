"""Recording of agent runs: redaction rules, request digests (router and client agree),
run calls taken from router spans, and the span tree `interlock traces show` prints."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from interlock import recording
from interlock.client import ToolCall as ClientToolCall
from interlock.client import chat_params
from interlock.replay import _digests
from interlock.services.router.domain.provider import ChatMessage, ToolCall, ToolSpec
from interlock.services.router.domain.redaction import (
    REDACTED,
    RedactionConfigError,
    RedactionRules,
    input_messages,
    request_params,
)
from interlock.services.traceingest.domain import SpanRecord
from interlock.services.traceingest.domain.runs import run_call_from_span, without_bodies
from interlock.traceingest.v1 import traceingest_pb2
from interlock.traces_cli import jaeger_link, span_tree

EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"


def test_patterns_and_named_fields_are_replaced() -> None:
    rules = RedactionRules.from_settings(json.dumps([EMAIL]), "card_number, SSN")
    assert rules.text("mail ann@example.co.uk now.") == f"mail {REDACTED} now."
    doc = json.dumps({"order": 1, "Card_Number": "4111", "nested": [{"ssn": "123"}], "note": "bob@example.com"})
    assert json.loads(rules.text(doc)) == {
        "order": 1,
        "Card_Number": REDACTED,
        "nested": [{"ssn": REDACTED}],
        "note": REDACTED,
    }


def test_json_without_anything_to_redact_keeps_its_bytes() -> None:
    rules = RedactionRules.from_settings("", "card_number")
    text = '{"text": "Look up order 4711"}'
    assert rules.text(text) == text


def test_keys_are_always_redacted() -> None:
    rules = RedactionRules.parse((), ())
    interlock_key = "il_a8779cba6318bc30_Ri7ZEVuOWXepl1wpb1fCoxxrUWSydOh6EkW_6zIa9dE"
    text = f"keys sk-proj-{'x' * 24} and {interlock_key} and Bearer abcdefghijkl"
    assert rules.text(text) == f"keys {REDACTED} and {REDACTED} and {REDACTED}"


def test_a_bad_rule_names_itself() -> None:
    with pytest.raises(RedactionConfigError, match="#0"):
        RedactionRules.parse(["("], ())
    with pytest.raises(RedactionConfigError, match="JSON array"):
        RedactionRules.from_settings("not json", "")


def test_router_and_client_digest_a_request_alike() -> None:
    call = ClientToolCall("call_1", "lookup", '{"q": 1}')
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "name": "lookup", "content": "{}"},
    ]
    tools = [{"name": "lookup", "description": "d", "parameters": {"type": "object"}}]
    params = chat_params("m", messages, 32, 0.5, tools=tools, tool_choice="auto")
    client_messages, client_whole = _digests(params)

    router_messages = [
        ChatMessage("system", "be brief"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("call_1", "lookup", '{"q": 1}'),)),
        ChatMessage("tool", "{}", tool_call_id="call_1", name="lookup"),
    ]
    digests = [
        recording.message_digest(
            m.role, m.content, [(c.id, c.name, c.arguments) for c in m.tool_calls], m.tool_call_id, m.name
        )
        for m in router_messages
    ]
    assert digests == client_messages
    assert client_whole == recording.request_digest(
        "m", digests, 32, [("lookup", "d", {"type": "object"})], "auto", 0.5
    )
    assert client_whole != recording.request_digest(
        "m", digests, 33, [("lookup", "d", {"type": "object"})], "auto", 0.5
    )


def _router_span(**extra: str) -> SpanRecord:
    rules = RedactionRules.parse([EMAIL], ())
    messages = input_messages([ChatMessage("user", "write to a@b.io")], rules)
    params = request_params(
        max_tokens=8,
        temperature=None,
        top_p=None,
        stop=(),
        tools=(ToolSpec("t"),),
        tool_choice=None,
        json_mode=False,
        rules=rules,
    )
    attributes = {
        recording.RUN_ID_ATTRIBUTE: "run-1",
        recording.AGENT_ATTRIBUTE: "planner",
        recording.STEP_ATTRIBUTE: "plan",
        recording.INPUT_MESSAGES_ATTRIBUTE: json.dumps(messages),
        recording.REQUEST_PARAMS_ATTRIBUTE: json.dumps(params),
        recording.OUTPUT_MESSAGES_ATTRIBUTE: json.dumps([{"role": "assistant", "parts": [], "finish_reason": "stop"}]),
        recording.MESSAGE_DIGESTS_ATTRIBUTE: '["d1"]',
        recording.REQUEST_DIGEST_ATTRIBUTE: "whole",
        "interlock.org": "default",
        "interlock.project": "search",
        "gen_ai.usage.input_tokens": "3",
        "interlock.cost_nanos": "42",
        "interlock.attempts": "2",
        **extra,
    }
    return SpanRecord(
        "a" * 32, "b" * 16, "", "router", "Chat", "SERVER", 1_000_000, 3_000_000, "UNSET", attributes=attributes
    )


def test_a_router_span_of_a_run_becomes_a_run_call_and_loses_its_bodies() -> None:
    span = _router_span()
    call = run_call_from_span(span)
    assert call is not None
    assert (call.run_id, call.agent, call.step, call.project) == ("run-1", "planner", "plan", "search")
    assert (call.input_tokens, call.cost_nanos, call.attempts, call.status) == (3, 42, 2, "OK")
    assert call.message_digests == ("d1",) and call.latency_ms == 2.0
    request = json.loads(call.request_json)
    assert request["messages"][0]["parts"][0]["content"] == f"write to {REDACTED}"
    assert request["params"]["tools"][0]["name"] == "t"
    stripped = without_bodies(span)
    assert not set(recording.BODY_ATTRIBUTES) & set(stripped.attributes)
    assert stripped.attributes["interlock.cost_nanos"] == "42"


def test_spans_without_a_run_or_a_body_are_no_run_calls() -> None:
    assert run_call_from_span(_router_span(**{recording.RUN_ID_ATTRIBUTE: ""})) is None
    plain = SpanRecord("a" * 32, "c" * 16, "", "budget", "Reserve", "SERVER", 0, 1, "UNSET")
    assert run_call_from_span(plain) is None
    assert without_bodies(plain) is plain


def _span(span_id: str, parent: str, name: str, start: int) -> traceingest_pb2.Span:
    def ts(ns: int) -> Timestamp:
        t = Timestamp()
        t.FromNanoseconds(ns)
        return t

    return traceingest_pb2.Span(
        trace_id="a" * 32,
        span_id=span_id,
        parent_span_id=parent,
        service_name="s",
        name=name,
        kind="INTERNAL",
        start_time=ts(start),
        end_time=ts(start + 1_000_000),
        status_code="UNSET",
    )


def test_span_tree_nests_children_in_start_order_and_keeps_orphans_as_roots() -> None:
    spans = [
        _span("03", "01", "step b", 30),
        _span("01", "", "run", 10),
        _span("02", "01", "step a", 20),
        _span("04", "ff", "orphan", 40),
    ]
    tree = span_tree(spans)
    assert [n["name"] for n in tree] == ["run", "orphan"]
    assert [n["name"] for n in tree[0]["children"]] == ["step a", "step b"]
    assert tree[0]["duration_ms"] == 1.0


def test_jaeger_link_follows_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INTERLOCK_JAEGER_UI_URL", raising=False)
    assert jaeger_link("ab" * 16) == f"http://127.0.0.1:16686/trace/{'ab' * 16}"
    monkeypatch.setenv("INTERLOCK_JAEGER_UI_URL", "https://jaeger.example/")
    assert jaeger_link("ab" * 16) == f"https://jaeger.example/trace/{'ab' * 16}"
