"""Error <-> gRPC status mapping, and field-naming request parsing."""

from __future__ import annotations

import pytest

from interlock._wire import find_invalid_utf8, parse_request
from interlock.errors import (
    BudgetExceededError,
    InterlockError,
    InvalidArgumentError,
    RateLimitedError,
    from_status,
    to_status,
)
from interlock.router.v1 import router_pb2


def test_invalid_argument_round_trips_with_field() -> None:
    back = from_status(to_status(InvalidArgumentError("must not be empty", field="params.messages")))
    assert isinstance(back, InvalidArgumentError)
    assert back.field == "params.messages"
    assert back.message == "must not be empty"


def test_rate_limited_round_trips_with_retry_and_scope() -> None:
    status = to_status(RateLimitedError("slow down", retry_after_s=1.5, metadata={"scope": "api_key"}))
    assert status.code == 8  # RESOURCE_EXHAUSTED
    back = from_status(status)
    assert isinstance(back, RateLimitedError)
    assert back.retry_after_s == 1.5
    assert back.metadata["scope"] == "api_key"


def test_budget_and_rate_limit_share_a_grpc_code_but_not_a_type() -> None:
    back = from_status(to_status(BudgetExceededError("over", metadata={"scope": "project:default/x"})))
    assert isinstance(back, BudgetExceededError)
    assert not isinstance(back, RateLimitedError)


def test_unknown_status_without_details_maps_by_grpc_code() -> None:
    status = to_status(InterlockError("boom"))
    del status.details[:]
    assert type(from_status(status)) is InterlockError


def _request_with(content: str) -> bytes:
    params = router_pb2.ChatParams(
        model="gpt-4o-mini",
        messages=[router_pb2.Message(role="user", content="fine"), router_pb2.Message(role="user", content=content)],
        max_tokens=5,
    )
    return router_pb2.ChatRequest(params=params).SerializeToString()


def test_invalid_utf8_is_named_down_to_the_repeated_field() -> None:
    raw = _request_with("XXXX").replace(b"XXXX", b"\xff\xfe\xfd\xfc")
    assert find_invalid_utf8(router_pb2.ChatRequest.DESCRIPTOR, raw) == "params.messages[1].content"
    with pytest.raises(InvalidArgumentError) as info:
        parse_request(router_pb2.ChatRequest, raw)
    assert info.value.field == "params.messages[1].content"


def test_valid_request_parses() -> None:
    parsed = parse_request(router_pb2.ChatRequest, _request_with("héllo"))
    assert parsed.params.messages[1].content == "héllo"


def test_garbage_bytes_are_invalid_argument() -> None:
    with pytest.raises(InvalidArgumentError):
        parse_request(router_pb2.ChatRequest, b"\x0a\xff\xff\xff\xff\xff")
