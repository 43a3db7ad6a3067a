"""A three-agent run is one trace, is recorded with redacted bodies, and replays exactly.

One module-scoped mesh (real Kafka and ClickHouse, the fake provider under a distinctive
provider key, redaction rules for an email regex and a `card_number` field) runs a
workflow: a planner, a researcher that calls a tool the model asked for, and a writer
whose model's first deployment fails so the call falls back. The tests then read the run
back: the whole tree under one trace id, `interlock traces`, replay from the recording
(with the fake provider stopped), replay on another model with a diff, a diverging agent,
another project's key, and a scan of everything written for secrets.

The span source is a function (trace id -> spans), so the same tree assertion can run
against another store of the trace (e.g. Jaeger) by adding a source.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
import grpc
import httpx
import pytest
import yaml
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import interlock
from interlock import cli
from interlock.devservers import JaegerServer, free_port
from interlock.mesh import Mesh
from interlock.testing import create_key, start_mesh, wait_for
from interlock.traceingest.v1 import traceingest_pb2, traceingest_pb2_grpc

pytestmark = pytest.mark.e2e

PROVIDER_KEY = f"sk-interlock-e2e-{uuid.uuid4().hex}"
EMAIL = f"escalations-{uuid.uuid4().hex[:8]}@example.com"
CARD = f"4111-{uuid.uuid4().int % 10**12:012d}"
REDACT_PATTERNS = json.dumps([r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"])
REDACT_FIELDS = "card_number"
TOOLS = [
    {
        "name": "lookup_order",
        "description": "Find an order by number",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
    }
]


def routing_doc(fake: str) -> dict[str, Any]:
    def deployment(provider: str, upstream: str, price_model: str) -> dict[str, Any]:
        kind = "openai" if provider == "primary" else "anthropic"
        return {"provider": provider, "upstream_model": upstream, "price": {"provider": kind, "model": price_model}}

    return {
        "providers": [
            {
                "name": "primary",
                "kind": "openai",
                "base_url": f"{fake}/v1",
                "api_key_env": "INTERLOCK_E2E_PROVIDER_KEY",
            },
            {
                "name": "backup",
                "kind": "anthropic",
                "base_url": f"{fake}/anthropic",
                "api_key_env": "INTERLOCK_E2E_PROVIDER_KEY",
            },
        ],
        "models": [
            {"name": "planner-model", "deployments": [deployment("primary", "gpt-4o-mini", "gpt-4o-mini")]},
            {"name": "researcher-model", "deployments": [deployment("primary", "gpt-4o", "gpt-4o")]},
            {
                # The first deployment always fails: every writer call falls back to `backup`.
                "name": "writer-model",
                "retry": {"max_attempts": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.05},
                "deployments": [
                    deployment("primary", "gpt-4o-mini@status=503", "gpt-4o-mini"),
                    deployment("backup", "claude-3-5-haiku-latest", "claude-3-5-haiku-latest"),
                ],
            },
            {
                # Another model for `replay --model`: it answers every call with a tool call.
                "name": "alt-model",
                "deployments": [deployment("primary", "gpt-4.1-nano@tool_call=lookup_order", "gpt-4.1-nano")],
            },
        ],
    }


def workflow(run: interlock.Run, client_of: Callable[[str], Any], writer_prompt: str = "Draft a reply") -> list[str]:
    """Three agents, one tool call; returns every output, in order."""
    outputs: list[str] = []
    with run.agent("planner"), run.step("plan"):
        answer = client_of("planner").chat(
            model="planner-model",
            messages=[
                {"role": "system", "content": f"You plan refunds. Escalations go to {EMAIL}."},
                {"role": "user", "content": "Plan the refund for order 4711"},
            ],
            max_tokens=32,
        )
        outputs.append(answer.text)
    researcher = client_of("researcher")
    with run.agent("researcher"):
        messages: list[dict[str, Any]] = [{"role": "user", "content": "Look up order 4711"}]
        with run.step("lookup"):
            asked = researcher.chat(
                model="researcher-model", messages=messages, max_tokens=32, tools=TOOLS, tool_choice="lookup_order"
            )
            call = asked.tool_calls[0]
            outputs.append(f"{call.name}({call.arguments})")
            with run.tool(call.name, call.id):
                result = json.dumps({"order": 4711, "status": "shipped", "card_number": CARD})
        messages += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": result},
            {"role": "user", "content": "Summarise the order status for the customer"},
        ]
        with run.step("summarise"):
            summary = researcher.chat(model="researcher-model", messages=messages, max_tokens=32, tools=TOOLS)
            outputs.append(summary.text)
    with run.agent("writer"), run.step("draft"):
        reply = client_of("writer").chat(
            model="writer-model",
            messages=[{"role": "user", "content": f"{writer_prompt}: {summary.text}"}],
            max_tokens=32,
        )
        outputs.append(reply.text)
    return outputs


@dataclass
class RecordedRun:
    mesh: Mesh
    run_id: str
    trace_id: str
    outputs: list[str]
    keys: dict[str, str]
    intruder_key: str
    client_spans: InMemorySpanExporter
    ch: Any
    jaeger_query_url: str


@pytest.fixture(scope="module")
def recorded(
    kafka_bootstrap: str, clickhouse_url: str, jaeger: JaegerServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RecordedRun]:
    tmp = tmp_path_factory.mktemp("traces")
    fake_port = free_port()
    routing = tmp / "routing.yaml"
    routing.write_text(yaml.safe_dump(routing_doc(f"http://127.0.0.1:{fake_port}")))
    env = {
        "INTERLOCK_E2E_PROVIDER_KEY": PROVIDER_KEY,
        "INTERLOCK_ROUTER_REDACT_PATTERNS": REDACT_PATTERNS,
        "INTERLOCK_ROUTER_REDACT_FIELDS": REDACT_FIELDS,
    }
    os.environ.update(env)
    try:
        mesh = start_mesh(
            tmp / "mesh",
            kafka=kafka_bootstrap,
            clickhouse=clickhouse_url,
            routing_path=str(routing),
            fake_provider_port=fake_port,
            jaeger=jaeger.otlp_endpoint,
        )
    finally:
        for name in env:
            del os.environ[name]
    host, port = clickhouse_url.removeprefix("http://").rsplit(":", 1)
    ch = clickhouse_connect.get_client(host=host, port=int(port))
    try:
        developers = {"planner": "alice", "researcher": "bob", "writer": "carol"}
        keys = {agent: create_key(mesh, "refunds", dev) for agent, dev in developers.items()}
        intruder = create_key(mesh, "intruder", "mallory")
        provider = interlock.client_tracer_provider(mesh.cfg.target("traceingest"), service_name="refund-agents")
        client_spans = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(client_spans))
        clients = {a: interlock.Client(mesh.cfg.target("router"), api_key=k) for a, k in keys.items()}
        run_id = f"refund-{uuid.uuid4().hex[:8]}"
        try:
            with interlock.Run(run_id, tracer_provider=provider) as run:
                outputs = workflow(run, clients.__getitem__)
            trace_id = run.trace_id
        finally:
            for c in clients.values():
                c.close()
            provider.shutdown()  # exports what is left
        yield RecordedRun(mesh, run_id, trace_id, outputs, keys, intruder, client_spans, ch, jaeger.query_url)
    finally:
        ch.close()
        mesh.stop()


def _traceingest(mesh: Mesh) -> traceingest_pb2_grpc.TraceIngestServiceStub:
    return traceingest_pb2_grpc.TraceIngestServiceStub(grpc.insecure_channel(mesh.cfg.target("traceingest")))


def _auth(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


def recorded_calls(r: RecordedRun) -> list[Any]:
    """The run's recorded calls once all four are stored."""

    def probe() -> list[Any] | None:
        try:
            response = _traceingest(r.mesh).GetRun(
                traceingest_pb2.GetRunRequest(run_id=r.run_id), metadata=_auth(r.keys["planner"]), timeout=10
            )
        except grpc.RpcError:
            return None
        return list(response.calls) if len(response.calls) == 4 else None

    return wait_for(probe, "the run's four recorded calls", timeout_s=60)


# Where the spans of a trace are read from: trace id -> (service, name, kind, span_id, parent_span_id, attributes).
SpanRow = tuple[str, str, str, str, str, dict[str, str]]
SpanSource = Callable[[str], list[SpanRow]]


def clickhouse_spans(ch: Any) -> SpanSource:
    def fetch(trace_id: str) -> list[SpanRow]:
        result = ch.query(
            "SELECT service_name, name, kind, span_id, parent_span_id, attributes"
            " FROM interlock.spans FINAL WHERE trace_id = {t:String}",
            parameters={"t": trace_id},
        )
        return [(str(a), str(b), str(c), str(d), str(e), dict(f)) for a, b, c, d, e, f in result.result_rows]

    return fetch


def jaeger_query_spans(query_url: str) -> SpanSource:
    """The same rows, read through Jaeger's HTTP query API (`GET /api/traces/{id}`)."""

    def fetch(trace_id: str) -> list[SpanRow]:
        response = httpx.get(f"{query_url}/api/traces/{trace_id}", timeout=10.0)
        if response.status_code == 404:
            return []
        response.raise_for_status()
        rows: list[SpanRow] = []
        for found in response.json().get("data") or []:
            services = {pid: p.get("serviceName", "") for pid, p in (found.get("processes") or {}).items()}
            for span in found.get("spans") or []:
                tags = {str(t["key"]): str(t["value"]) for t in span.get("tags") or []}
                parent = next((r["spanID"] for r in span.get("references") or [] if r["refType"] == "CHILD_OF"), "")
                kind = tags.get("span.kind", "internal").upper()
                rows.append(
                    (services.get(span["processID"], ""), span["operationName"], kind, span["spanID"], parent, tags)
                )
        return rows

    return fetch


Match = Callable[[SpanRow], bool]


def named(name: str) -> Match:
    return lambda s: s[1] == name


EXPECTED: dict[str, Match] = {
    "run": lambda s: s[1].startswith("run refund-") and s[0] == "refund-agents",
    **{f"agent {a}": named(f"invoke_agent {a}") for a in ("planner", "researcher", "writer")},
    **{f"step {n}": named(f"step {n}") for n in ("plan", "lookup", "summarise", "draft")},
    "tool": lambda s: s[1] == "execute_tool lookup_order" and s[5].get("gen_ai.tool.name") == "lookup_order",
    "client llm call": lambda s: s[0] == "refund-agents" and s[1] == "chat writer-model" and "CLIENT" in s[2],
    "router server": lambda s: s[0] == "router" and s[1].endswith("RouterService/Chat") and "SERVER" in s[2],
    "provider attempt": lambda s: s[0] == "router" and s[1].startswith("chat gpt-4o-mini@status=503"),
    "fallback attempt": lambda s: s[0] == "router" and s[1] == "chat claude-3-5-haiku-latest",
    "provider http call": lambda s: s[0] == "router" and s[1].startswith("POST") and "CLIENT" in s[2],
    "rate-limiter server": lambda s: s[0] == "ratelimit" and s[1].endswith("ShouldRateLimit") and "SERVER" in s[2],
    "budget server": lambda s: s[0] == "budget" and "BudgetService/" in s[1] and "SERVER" in s[2],
    "kafka produce": lambda s: s[0] == "budget" and "PRODUCER" in s[2],
    "kafka consume": lambda s: s[0] == "trace-ingest" and "CONSUMER" in s[2],
    "clickhouse insert": lambda s: s[0] == "trace-ingest" and "clickhouse" in s[1].lower() and "CLIENT" in s[2],
}


def full_tree(source: SpanSource, trace_id: str) -> list[SpanRow]:
    """Every expected span of the run under `trace_id`, waiting for late exports."""

    def probe() -> list[SpanRow] | None:
        spans = source(trace_id)
        return spans if all(any(m(s) for s in spans) for m in EXPECTED.values()) else None

    try:
        return wait_for(probe, "the run's whole tree under one trace id", timeout_s=90)
    except AssertionError:
        spans = source(trace_id)
        missing = [name for name, m in EXPECTED.items() if not any(m(s) for s in spans)]
        raise AssertionError(f"missing {missing}; trace has {sorted((s[0], s[1]) for s in spans)}") from None


def test_the_run_is_one_trace_with_every_hop_and_the_gen_ai_attributes(recorded: RecordedRun) -> None:
    spans = full_tree(clickhouse_spans(recorded.ch), recorded.trace_id)
    by_id = {s[3]: s for s in spans}

    def ancestors(span: SpanRow) -> list[str]:
        names = []
        while span[4] in by_id:
            span = by_id[span[4]]
            names.append(span[1])
        return names

    # run > agent > step > LLM call (client) > router > provider attempt > HTTP call to the provider
    fallback = next(s for s in spans if EXPECTED["fallback attempt"](s))
    http = next(s for s in spans if s[4] == fallback[3] and s[1].startswith("POST"))
    chain = ancestors(http)
    assert chain[0] == "chat claude-3-5-haiku-latest"
    assert chain[1].endswith("RouterService/Chat")
    assert chain[2:] == ["chat writer-model", "step draft", "invoke_agent writer", f"run {recorded.run_id}"]
    tool = next(s for s in spans if EXPECTED["tool"](s))
    assert ancestors(tool) == ["step lookup", "invoke_agent researcher", f"run {recorded.run_id}"]

    router = by_id[fallback[4]][5]
    assert router["gen_ai.operation.name"] == "chat"
    assert router["gen_ai.request.model"] == "writer-model"
    assert router["gen_ai.response.model"] == "claude-3-5-haiku-latest"
    assert router["gen_ai.provider.name"] == "backup"
    assert router["gen_ai.agent.name"] == "writer"
    assert router["interlock.step"] == "draft"
    assert router["interlock.run_id"] == recorded.run_id
    assert int(router["gen_ai.usage.input_tokens"]) > 0 and int(router["gen_ai.usage.output_tokens"]) > 0
    assert int(router["interlock.cost_nanos"]) > 0
    assert router["interlock.attempts"] == "2"
    assert router["interlock.budget.decision"] == "reserved"
    assert router["interlock.ratelimit.decision"] == "allowed"
    assert router["interlock.config_version"]
    # Bodies are not kept on spans: they live in run_calls, with their own retention.
    assert not any("gen_ai.input.messages" in s[5] for s in spans)
    failed = next(s for s in spans if EXPECTED["provider attempt"](s))
    assert failed[5]["gen_ai.provider.name"] == "primary"


def test_jaeger_query_api_returns_the_same_tree(recorded: RecordedRun) -> None:
    from_clickhouse, from_jaeger = clickhouse_spans(recorded.ch), jaeger_query_spans(recorded.jaeger_query_url)
    full_tree(from_jaeger, recorded.trace_id)

    def same() -> set[tuple[str, str, str]] | None:
        # Same spans (ids, parents, names), whichever store they are read from; the last
        # batches may reach one store a moment before the other.
        ids = {(s[3], s[4], s[1]) for s in from_jaeger(recorded.trace_id)}
        return ids if ids == {(s[3], s[4], s[1]) for s in from_clickhouse(recorded.trace_id)} else None

    assert len(wait_for(same, "Jaeger and ClickHouse to hold the same spans", timeout_s=60)) >= len(EXPECTED)


def test_bodies_are_recorded_redacted_and_the_cli_prints_the_run(
    recorded: RecordedRun, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INTERLOCK_JAEGER_UI_URL", raising=False)
    calls = recorded_calls(recorded)
    assert [(c.agent, c.step) for c in calls] == [
        ("planner", "plan"),
        ("researcher", "lookup"),
        ("researcher", "summarise"),
        ("writer", "draft"),
    ]
    planner = json.loads(calls[0].request_json)
    assert planner["messages"][0]["parts"][0]["content"] == "You plan refunds. Escalations go to [REDACTED]."
    tool_result = json.loads(calls[2].request_json)["messages"][2]["parts"][0]
    assert tool_result["type"] == "tool_call_response"
    assert json.loads(tool_result["response"])["card_number"] == "[REDACTED]"
    assert json.loads(calls[1].response_json)["messages"][0]["parts"][0]["type"] == "tool_call"
    assert calls[3].provider == "backup" and calls[3].attempts == 2

    target = ["--traceingest-target", recorded.mesh.cfg.target("traceingest"), "--api-key", recorded.keys["writer"]]
    assert cli.main(["traces", "list", "--json", *target]) == 0
    runs = {r["run_id"]: r for r in json.loads(capsys.readouterr().out)}
    run = runs[recorded.run_id]
    assert run["trace_ids"] == [recorded.trace_id]
    assert run["agents"] == ["planner", "researcher", "writer"]
    assert run["calls"] == 4 and run["errors"] == 0

    assert cli.main(["traces", "show", recorded.run_id, *target]) == 0
    text = capsys.readouterr().out
    assert f"trace {recorded.trace_id}" in text
    assert "invoke_agent writer" in text and "attempts=2" in text and "ERROR" in text
    assert cli.main(["traces", "show", recorded.run_id, "--json", *target]) == 0
    tree = json.loads(capsys.readouterr().out)["tree"]
    assert tree[0]["name"] == f"run {recorded.run_id}"
    assert [n["name"] for n in tree[0]["children"]] == [
        "invoke_agent planner",
        "invoke_agent researcher",
        "invoke_agent writer",
    ]

    assert cli.main(["traces", "open", recorded.run_id, *target]) == 0
    assert capsys.readouterr().out.strip() == f"http://127.0.0.1:16686/trace/{recorded.trace_id}"


def test_another_projects_key_reads_nothing_of_the_run(recorded: RecordedRun) -> None:
    recorded_calls(recorded)
    stub = _traceingest(recorded.mesh)
    with pytest.raises(grpc.RpcError) as info:
        stub.GetRun(
            traceingest_pb2.GetRunRequest(run_id=recorded.run_id), metadata=_auth(recorded.intruder_key), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    runs = stub.ListRuns(traceingest_pb2.ListRunsRequest(), metadata=_auth(recorded.intruder_key), timeout=10)
    assert recorded.run_id not in [r.run_id for r in runs.runs]
    trace = stub.GetTrace(
        traceingest_pb2.GetTraceRequest(trace_id=recorded.trace_id), metadata=_auth(recorded.intruder_key), timeout=10
    )
    assert list(trace.spans) == []
    own = stub.GetTrace(
        traceingest_pb2.GetTraceRequest(trace_id=recorded.trace_id),
        metadata=_auth(recorded.keys["planner"]),
        timeout=10,
    )
    assert len(own.spans) > 0


def test_replay_on_another_model_prints_a_diff(recorded: RecordedRun, capsys: pytest.CaptureFixture[str]) -> None:
    recorded_calls(recorded)
    cfg = recorded.mesh.cfg
    args = ["--traceingest-target", cfg.target("traceingest"), "--router-target", cfg.target("router")]
    args += ["--api-key", recorded.keys["planner"]]
    assert cli.main(["replay", recorded.run_id, "--model", "alt-model", "--json", *args]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert [c["model"] for c in diff["calls"]] == [
        ["planner-model", "alt-model"],
        ["researcher-model", "alt-model"],
        ["researcher-model", "alt-model"],
        ["writer-model", "alt-model"],
    ]
    # The alternative answers every call with a tool call: three outputs change, the
    # tool-call step keeps its output; costs come from the other model's price.
    assert [c["same_output"] for c in diff["calls"]] == [False, True, False, False]
    assert all(c["cost_usd"][0] != c["cost_usd"][1] for c in diff["calls"])
    assert cli.main(["replay", recorded.run_id, "--model", "alt-model", *args]) == 0
    text = capsys.readouterr().out
    assert "output differs" in text and "+[tool_call lookup_order(" in text


def test_replay_reproduces_every_output_without_any_provider(
    recorded: RecordedRun, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded_calls(recorded)
    # No provider to call: the fake provider (every deployment's upstream) is stopped.
    fake = recorded.mesh.processes["fakeprovider"]
    fake.terminate()
    fake.wait(30)

    recording = interlock.Recording.fetch(
        recorded.run_id, recorded.mesh.cfg.target("traceingest"), api_key=recorded.keys["planner"]
    )
    replay = interlock.ReplayClient(recording)
    with interlock.Run(recorded.run_id) as run:
        outputs = workflow(run, lambda agent: replay)
    replay.finish()
    assert outputs == recorded.outputs
    assert [o.encode() for o in outputs] == [o.encode() for o in recorded.outputs]
    assert replay.replayed == 4

    args = ["--traceingest-target", recorded.mesh.cfg.target("traceingest"), "--api-key", recorded.keys["planner"]]
    assert cli.main(["replay", recorded.run_id, "--json", *args]) == 0
    printed = json.loads(capsys.readouterr().out)
    texts = [c["output"] for c in printed["calls"]]
    assert [texts[0], texts[2], texts[3]] == [recorded.outputs[0], recorded.outputs[2], recorded.outputs[3]]
    assert texts[1] == f"\n[tool_call {recorded.outputs[1]}]"
    assert printed["provider_calls"] == 0


def test_a_diverging_agent_is_reported_at_its_step(recorded: RecordedRun) -> None:
    recorded_calls(recorded)
    recording = interlock.Recording.fetch(recorded.run_id, recorded.mesh.cfg.target("traceingest"))
    replay = interlock.ReplayClient(recording)
    with interlock.Run(recorded.run_id) as run, pytest.raises(interlock.ReplayDivergenceError) as info:
        workflow(run, lambda agent: replay, writer_prompt="Draft a short reply")
    err = info.value
    assert (err.agent, err.step, err.call_index, err.field) == ("writer", "draft", 0, "messages[0]")
    assert "agent 'writer' step 'draft' call #0" in str(err)


def _needles(recorded: RecordedRun) -> dict[str, str]:
    needles = {"provider key": PROVIDER_KEY, "email": EMAIL, "card number": CARD}
    for owner, key in [*recorded.keys.items(), ("intruder", recorded.intruder_key)]:
        needles[f"{owner}'s Interlock key"] = key
        needles[f"{owner}'s Interlock key secret"] = key.split("_", 2)[2]
    return needles


def test_no_key_and_no_redacted_value_is_written_anywhere(recorded: RecordedRun) -> None:
    recorded_calls(recorded)
    needles = _needles(recorded)
    found: list[str] = []
    tables = [
        str(r[0])
        for r in recorded.ch.query(
            "SELECT name FROM system.tables WHERE database = 'interlock' AND engine NOT LIKE '%View%'"
        ).result_rows
    ]
    assert {"spans", "run_calls", "usage_events"} <= set(tables)
    for table in tables:
        dump = recorded.ch.raw_query(f"SELECT * FROM interlock.{table} FORMAT JSONEachRow").decode()
        found += [f"{what} in ClickHouse table {table}" for what, value in needles.items() if value in dump]
    logs: list[Path] = sorted(recorded.mesh.log_dir.glob("*.log"))
    assert {p.stem for p in logs} >= {"router", "budget", "ratelimit", "traceingest", "fakeprovider"}
    for path in logs:
        text = path.read_text(errors="replace")
        found += [f"{what} in log {path.name}" for what, value in needles.items() if value in text]
    for span in recorded.client_spans.get_finished_spans():
        text = json.dumps({"name": span.name, "attributes": dict(span.attributes or {})}, default=str)
        found += [f"{what} in client span {span.name}" for what, value in needles.items() if value in text]
    assert not found, found
    # The scan would have seen them: the recording holds the redaction markers instead.
    dump = recorded.ch.raw_query(
        "SELECT request_json FROM interlock.run_calls WHERE run_id = {r:String} FORMAT JSONEachRow",
        parameters={"r": recorded.run_id},
    ).decode()
    assert dump.count("[REDACTED]") >= 2
