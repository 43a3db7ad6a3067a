"""The whole mesh as processes on real Kafka and ClickHouse: one request, end to end.

A request goes through the generated gRPC stub to the router, is admitted by the
rate-limiter, reserved and committed by the budget service, answered by the fake OpenAI
provider, published to Kafka, consumed by trace-ingest and written to ClickHouse. The
test finds the usage row with clickhouse-connect, and all the hops' spans in one trace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import clickhouse_connect
import grpc
import pytest

from interlock.budget.v1 import budget_pb2, budget_pb2_grpc
from interlock.mesh import Mesh
from interlock.router.v1 import router_pb2
from interlock.testing import auth, chat_params, create_key, router_stub, start_mesh, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mesh(kafka_bootstrap: str, clickhouse_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = start_mesh(tmp_path_factory.mktemp("mesh"), kafka=kafka_bootstrap, clickhouse=clickhouse_url)
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def ch(clickhouse_url: str) -> Iterator[Any]:
    host, port = clickhouse_url.removeprefix("http://").rsplit(":", 1)
    client = clickhouse_connect.get_client(host=host, port=int(port))
    try:
        yield client
    finally:
        client.close()


def usage_rows(ch: Any, request_id: str) -> list[tuple[Any, ...]]:
    result = ch.query(
        "SELECT project, developer, model, input_tokens, output_tokens, cost_nanos, trace_id"
        " FROM interlock.usage_events FINAL WHERE request_id = {id:String}",
        parameters={"id": request_id},
    )
    return list(result.result_rows)


def spans_of(ch: Any, trace_id: str) -> list[tuple[str, str, str]]:
    result = ch.query(
        "SELECT service_name, name, kind FROM interlock.spans WHERE trace_id = {t:String}",
        parameters={"t": trace_id},
    )
    return [(str(a), str(b), str(c)) for a, b, c in result.result_rows]


Span = tuple[str, str, str]
EXPECTED_HOPS: dict[str, Callable[[Span], bool]] = {
    "router server": lambda s: s[0] == "router" and s[1].endswith("RouterService/Chat") and "SERVER" in s[2],
    "rate-limiter server": lambda s: s[0] == "ratelimit" and s[1].endswith("ShouldRateLimit") and "SERVER" in s[2],
    "budget reserve": lambda s: s[0] == "budget" and s[1].endswith("BudgetService/Reserve") and "SERVER" in s[2],
    "budget commit": lambda s: s[0] == "budget" and s[1].endswith("BudgetService/Commit") and "SERVER" in s[2],
    "provider call": lambda s: s[0] == "router" and s[1].startswith("POST") and "CLIENT" in s[2],
    "kafka produce": lambda s: s[0] == "budget" and "PRODUCER" in s[2],
    "kafka consume": lambda s: s[0] == "trace-ingest" and "CONSUMER" in s[2],
    "clickhouse insert": lambda s: s[0] == "trace-ingest" and "clickhouse" in s[1].lower() and "CLIENT" in s[2],
}


def test_one_request_one_usage_row_and_one_trace(mesh: Mesh, ch: Any) -> None:
    key = create_key(mesh, "search", "alice")
    channel, stub = router_stub(mesh)
    with channel:
        response = stub.Chat(router_pb2.ChatRequest(params=chat_params()), metadata=auth(key), timeout=30)
    assert response.text
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.cost_nanos > 0
    assert len(response.trace_id) == 32

    rows = wait_for(lambda: usage_rows(ch, response.request_id) or None, "the usage row in ClickHouse")
    assert len(rows) == 1
    project, developer, model, input_tokens, output_tokens, cost_nanos, trace_id = rows[0]
    assert (project, developer, model) == ("search", "alice", "gpt-4o-mini")
    assert (input_tokens, output_tokens) == (response.usage.input_tokens, response.usage.output_tokens)
    assert cost_nanos == response.cost_nanos
    assert trace_id == response.trace_id

    def all_hops() -> list[tuple[str, str, str]] | None:
        spans = spans_of(ch, response.trace_id)
        return spans if all(any(match(s) for s in spans) for match in EXPECTED_HOPS.values()) else None

    try:
        wait_for(all_hops, "every hop's span under the request's trace id", timeout_s=60)
    except AssertionError:
        spans = spans_of(ch, response.trace_id)
        missing = [hop for hop, match in EXPECTED_HOPS.items() if not any(match(s) for s in spans)]
        raise AssertionError(f"missing spans {missing}; trace has {sorted(spans)}") from None
    # The ledger agrees with what the caller was told.
    with grpc.insecure_channel(mesh.cfg.target("budget")) as channel:
        spend = budget_pb2_grpc.BudgetServiceStub(channel).GetSpend(
            budget_pb2.GetSpendRequest(
                scope=budget_pb2.Scope(kind=budget_pb2.SCOPE_KIND_DEVELOPER, project="search", developer="alice")
            ),
            timeout=5,
        )
    assert spend.committed_nanos == response.cost_nanos
    assert spend.reserved_nanos == 0


def test_stream_yields_deltas_then_usage_and_is_recorded_once(mesh: Mesh, ch: Any) -> None:
    key = create_key(mesh, "search", "bob")
    channel, stub = router_stub(mesh)
    params = chat_params("tell me a longer story please")
    with channel:
        items = list(stub.ChatStream(router_pb2.ChatStreamRequest(params=params), metadata=auth(key), timeout=30))
    deltas = [i.delta for i in items if i.WhichOneof("event") == "delta"]
    done = items[-1].done
    # The fake provider sends its whole answer in one burst, and deltas that reach the router
    # together leave it as one message (spaced ones one by one: test_budget_hard_limits.py).
    assert deltas
    assert items[-1].WhichOneof("event") == "done"
    assert done.text == "".join(deltas)
    rows = wait_for(lambda: usage_rows(ch, params.request_id) or None, "the streamed call's usage row")
    assert len(rows) == 1
    assert rows[0][3:6] == (done.usage.input_tokens, done.usage.output_tokens, done.cost_nanos)


def test_bad_input_is_invalid_argument_naming_the_field_and_records_nothing(mesh: Mesh, ch: Any) -> None:
    key = create_key(mesh, "badinput", "mallory")
    channel, stub = router_stub(mesh)
    cases: list[tuple[router_pb2.ChatParams, str]] = [
        (chat_params(messages=[]), "params.messages"),
        (chat_params(model="no-such-model"), "params.model"),
        (chat_params(max_tokens=-5), "params.max_tokens"),
        (chat_params("x" * (10 * 1024 * 1024)), "params.messages[0].content"),
    ]
    bad_ids = []
    with channel:
        for params, field in cases:
            bad_ids.append(params.request_id)
            with pytest.raises(grpc.RpcError) as info:
                stub.Chat(router_pb2.ChatRequest(params=params), metadata=auth(key), timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            assert field in (info.value.details() or "") or _field_of(info.value) == field
            assert _field_of(info.value) == field
        # Invalid UTF-8 cannot be built with the stub: send raw bytes on the same method.
        raw = chat_params("PLACEHOLDER")
        bad_ids.append(raw.request_id)
        body = (
            router_pb2.ChatRequest(params=raw).SerializeToString().replace(b"PLACEHOLDER", b"\xff\xfe\xfd" + b"x" * 8)
        )
        raw_chat: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/interlock.router.v1.RouterService/Chat"
        )
        with pytest.raises(grpc.RpcError) as info:
            raw_chat(body, metadata=auth(key), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _field_of(info.value) == "params.messages[0].content"
        # A good call after the bad ones: once it is in ClickHouse, the bad ones would be too.
        good = chat_params()
        stub.Chat(router_pb2.ChatRequest(params=good), metadata=auth(key), timeout=30)
    wait_for(lambda: usage_rows(ch, good.request_id) or None, "the good call's usage row")
    for request_id in bad_ids:
        assert usage_rows(ch, request_id) == []
    count = ch.query("SELECT count() FROM interlock.usage_events FINAL WHERE project = 'badinput'").result_rows[0][0]
    assert count == 1
    with grpc.insecure_channel(mesh.cfg.target("budget")) as budget_channel:
        spend = budget_pb2_grpc.BudgetServiceStub(budget_channel).GetSpend(
            budget_pb2.GetSpendRequest(scope=budget_pb2.Scope(kind=budget_pb2.SCOPE_KIND_PROJECT, project="badinput")),
            timeout=5,
        )
    assert spend.reserved_nanos == 0


def test_missing_or_wrong_key_is_unauthenticated_and_records_nothing(mesh: Mesh, ch: Any) -> None:
    channel, stub = router_stub(mesh)
    ids = []
    with channel:
        for metadata in ((), auth("il_0123456789abcdef_" + "A" * 43), auth("not-a-key")):
            params = chat_params()
            ids.append(params.request_id)
            with pytest.raises(grpc.RpcError) as info:
                stub.Chat(router_pb2.ChatRequest(params=params), metadata=metadata, timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        key = create_key(mesh, "authcheck", "dave")
        good = chat_params()
        stub.Chat(router_pb2.ChatRequest(params=good), metadata=auth(key), timeout=30)
    wait_for(lambda: usage_rows(ch, good.request_id) or None, "the authenticated call's usage row")
    for request_id in ids:
        assert usage_rows(ch, request_id) == []


def _field_of(error: grpc.RpcError) -> str | None:
    from interlock.errors import from_rpc_error

    return from_rpc_error(error).field
