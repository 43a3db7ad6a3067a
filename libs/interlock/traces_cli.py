"""`interlock traces list|show|open` and `interlock replay`: recorded agent runs from trace-ingest."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc

from interlock._settings import load_settings
from interlock.errors import InterlockError, from_rpc_error
from interlock.pricing import nanos_to_usd

Targets = Callable[..., None]


@dataclass(frozen=True)
class TracesSettings:
    """Settings of the trace commands, from `INTERLOCK_*` environment variables."""

    jaeger_ui_url: str = "http://127.0.0.1:16686"
    """Jaeger UI that `interlock traces open` links to (`INTERLOCK_JAEGER_UI_URL`)."""


def jaeger_link(trace_id: str, settings: TracesSettings | None = None) -> str:
    base = (settings or load_settings(TracesSettings, "INTERLOCK_")).jaeger_ui_url.rstrip("/")
    return f"{base}/trace/{trace_id}"


def _api_key(args: argparse.Namespace) -> str:
    return str(getattr(args, "api_key", None) or os.environ.get("INTERLOCK_API_KEY", ""))


def _metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    key = _api_key(args)
    return (("authorization", f"Bearer {key}"),) if key else ()


def _stub(target: str) -> tuple[grpc.Channel, Any]:
    from interlock.traceingest.v1 import traceingest_pb2_grpc

    channel = grpc.insecure_channel(target)
    return channel, traceingest_pb2_grpc.TraceIngestServiceStub(channel)


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def summary_dict(s: Any) -> dict[str, Any]:
    started, ended = s.started_at.ToNanoseconds(), s.ended_at.ToNanoseconds()
    return {
        "run_id": s.run_id,
        "trace_ids": list(s.trace_ids),
        "org": s.org,
        "project": s.project,
        "agents": list(s.agents),
        "calls": s.calls,
        "errors": s.errors,
        "input_tokens": s.input_tokens,
        "output_tokens": s.output_tokens,
        "cost_usd": str(nanos_to_usd(s.cost_nanos)),
        "started_at": _iso(started),
        "duration_ms": round((ended - started) / 1e6, 3),
    }


def _fail(message: str, code: int = 1) -> int:
    import sys

    print(f"interlock: {message}", file=sys.stderr)
    return code


def cmd_traces_list(args: argparse.Namespace, target: str) -> int:
    from interlock.traceingest.v1 import traceingest_pb2

    channel, stub = _stub(target)
    with channel:
        try:
            response = stub.ListRuns(
                traceingest_pb2.ListRunsRequest(limit=args.limit), metadata=_metadata(args), timeout=30
            )
        except grpc.RpcError as exc:
            return _fail(str(from_rpc_error(exc)))
    runs = [summary_dict(r) for r in response.runs]
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    columns = ["run_id", "started_at", "duration_ms", "agents", "calls", "errors", "tokens", "cost_usd", "trace_ids"]
    table = [
        {
            **{c: str(r.get(c, "")) for c in columns},
            "agents": ",".join(r["agents"]),
            "tokens": f"{r['input_tokens']}+{r['output_tokens']}",
            "trace_ids": ",".join(r["trace_ids"]),
        }
        for r in runs
    ]
    widths = {c: max([len(c), *(len(row[c]) for row in table)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in table:
        print("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())
    if not runs:
        print("(no recorded runs)")
    return 0


def _get_run(args: argparse.Namespace, target: str) -> Any:
    from interlock.traceingest.v1 import traceingest_pb2

    channel, stub = _stub(target)
    with channel:
        try:
            return stub.GetRun(traceingest_pb2.GetRunRequest(run_id=args.run), metadata=_metadata(args), timeout=30)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None


_SHOWN_ATTRIBUTES = (
    "gen_ai.operation.name",
    "gen_ai.agent.name",
    "interlock.step",
    "gen_ai.tool.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.provider.name",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "interlock.cost_nanos",
    "interlock.attempts",
    "interlock.attempt",
    "interlock.config_version",
    "interlock.budget.decision",
    "interlock.ratelimit.decision",
)


def span_tree(spans: Sequence[Any]) -> list[dict[str, Any]]:
    """Spans as nested dicts (children oldest first); spans whose parent is not stored are roots."""
    nodes: dict[str, dict[str, Any]] = {}
    for s in spans:
        start, end = s.start_time.ToNanoseconds(), s.end_time.ToNanoseconds()
        nodes[s.span_id] = {
            "name": s.name,
            "service": s.service_name,
            "trace_id": s.trace_id,
            "span_id": s.span_id,
            "parent_span_id": s.parent_span_id,
            "kind": s.kind,
            "status": s.status_code,
            "start": _iso(start),
            "duration_ms": round((end - start) / 1e6, 3),
            "attributes": {k: s.attributes[k] for k in _SHOWN_ATTRIBUTES if k in s.attributes},
            "children": [],
            "_start": start,
        }
    roots: list[dict[str, Any]] = []
    for node in nodes.values():
        parent = nodes.get(node["parent_span_id"])
        (parent["children"] if parent is not None else roots).append(node)
    for node in nodes.values():
        node["children"].sort(key=lambda n: (n["_start"], n["span_id"]))
    roots.sort(key=lambda n: (n["_start"], n["span_id"]))
    for node in nodes.values():
        del node["_start"]
    return roots


def _label(node: dict[str, Any]) -> str:
    a = node["attributes"]
    bits = [f"{node['name']} [{node['service']}] {node['duration_ms']:.1f} ms"]
    if "gen_ai.usage.input_tokens" in a:
        bits.append(f"{a['gen_ai.usage.input_tokens']}+{a.get('gen_ai.usage.output_tokens', '0')} tok")
    if "interlock.cost_nanos" in a:
        bits.append(f"${nanos_to_usd(int(a['interlock.cost_nanos']))}")
    if "gen_ai.provider.name" in a and node["kind"] == "SERVER":
        bits.append(f"via {a['gen_ai.provider.name']}/{a.get('gen_ai.response.model', '')}")
    if int(a.get("interlock.attempts", "1") or 1) > 1:
        bits.append(f"attempts={a['interlock.attempts']}")
    for decision in ("interlock.budget.decision", "interlock.ratelimit.decision"):
        if a.get(decision) in ("refused", "error"):
            bits.append(f"{decision.split('.')[1]} {a[decision]}")
    if node["status"] == "ERROR":
        bits.append("ERROR")
    return "  ".join(bits)


def print_tree(roots: Sequence[dict[str, Any]], prefix: str = "") -> None:
    for i, node in enumerate(roots):
        last = i == len(roots) - 1
        print(f"{prefix}{'└─ ' if last else '├─ '}{_label(node)}")
        print_tree(node["children"], prefix + ("   " if last else "│  "))


def cmd_traces_show(args: argparse.Namespace, target: str) -> int:
    try:
        run = _get_run(args, target)
    except InterlockError as exc:
        return _fail(str(exc))
    summary = summary_dict(run.summary)
    tree = span_tree(run.spans)
    if args.json:
        calls = [
            {
                "agent": c.agent,
                "step": c.step,
                "request_id": c.request_id,
                "model": c.request_model,
                "provider": c.provider,
                "response_model": c.response_model,
                "status": c.status,
                "attempts": c.attempts,
                "input_tokens": c.input_tokens,
                "output_tokens": c.output_tokens,
                "cost_usd": str(nanos_to_usd(c.cost_nanos)),
                "latency_ms": round(c.latency_ms, 3),
                "request": json.loads(c.request_json or "{}"),
                "response": json.loads(c.response_json or "{}"),
            }
            for c in run.calls
        ]
        print(json.dumps({"summary": summary, "calls": calls, "tree": tree}, indent=2))
        return 0
    print(
        f"run {summary['run_id']}  project {summary['org']}/{summary['project']}  agents {','.join(summary['agents'])}"
        f"  calls {summary['calls']} (errors {summary['errors']})"
        f"  tokens {summary['input_tokens']}+{summary['output_tokens']}  cost ${summary['cost_usd']}"
        f"  {summary['duration_ms']:.1f} ms"
    )
    for trace_id in summary["trace_ids"]:
        print(f"trace {trace_id}")
        print_tree([r for r in tree if r["trace_id"] == trace_id])
    return 0


def cmd_traces_open(args: argparse.Namespace, target: str) -> int:
    try:
        run = _get_run(args, target)
    except InterlockError as exc:
        return _fail(str(exc))
    links = [jaeger_link(t) for t in run.summary.trace_ids]
    if args.json:
        print(json.dumps({"run_id": args.run, "links": links}, indent=2))
    else:
        for link in links:
            print(link)
    return 0


def _output(text: str, tool_calls: Sequence[Any]) -> str:
    calls = "".join(f"\n[tool_call {c.name}({c.arguments})]" for c in tool_calls)
    return text + calls


def cmd_replay(args: argparse.Namespace, traceingest: str, router: str) -> int:
    from interlock.replay import Recording

    try:
        recording = Recording.fetch(args.run, traceingest, _api_key(args) or None)
    except InterlockError as exc:
        return _fail(str(exc))
    if not args.model:
        rows = []
        for i, call in enumerate(recording.calls):
            result = call.result()
            rows.append(
                {
                    "call": i,
                    "agent": call.agent,
                    "step": call.step,
                    "model": result.model,
                    "output": _output(result.text, result.tool_calls),
                    "input_tokens": result.usage.input_tokens,
                    "output_tokens": result.usage.output_tokens,
                    "cost_usd": str(result.cost_usd),
                }
            )
        if args.json:
            print(json.dumps({"run_id": args.run, "calls": rows, "provider_calls": 0}, indent=2))
            return 0
        for row in rows:
            print(f"#{row['call']} {row['agent']}/{row['step']} {row['model']}: {row['output']}")
        print(f"replayed {len(rows)} calls of run {args.run} from the recording; no provider was called")
        return 0
    return _replay_on_model(args, recording, router)


def _replay_on_model(args: argparse.Namespace, recording: Any, router: str) -> int:
    from interlock.client import Client

    key = _api_key(args)
    if not key:
        return _fail("replay on another model calls the router: pass --api-key or set INTERLOCK_API_KEY", 2)
    new_run = f"{args.run[:100]}.on-{uuid.uuid4().hex[:6]}"
    rows = []
    with Client(router, api_key=key) as client:
        for i, call in enumerate(recording.calls):
            params = call.request.get("params", {})
            started = time.monotonic()
            try:
                result = client.chat(
                    model=args.model,
                    messages=call.messages(),
                    max_tokens=int(params.get("max_tokens") or 256),
                    temperature=params.get("temperature"),
                    run_id=new_run,
                    agent=call.agent or None,
                    step=call.step or None,
                    tools=params.get("tools") or (),
                    tool_choice=params.get("tool_choice") or None,
                )
            except InterlockError as exc:
                return _fail(f"call #{i} on {args.model}: {exc}")
            latency = (time.monotonic() - started) * 1000
            before = _output(call.text, call.tool_calls)
            after = _output(result.text, result.tool_calls)
            rows.append(
                {
                    "call": i,
                    "agent": call.agent,
                    "step": call.step,
                    "model": [call.request_model, args.model],
                    "output": [before, after],
                    "same_output": before == after,
                    "input_tokens": [call.input_tokens, result.usage.input_tokens],
                    "output_tokens": [call.output_tokens, result.usage.output_tokens],
                    "cost_usd": [str(nanos_to_usd(call.cost_nanos)), str(result.cost_usd)],
                    "latency_ms": [round(call.latency_ms, 3), round(latency, 3)],
                }
            )
    if args.json:
        print(json.dumps({"run_id": args.run, "replay_run_id": new_run, "model": args.model, "calls": rows}, indent=2))
        return 0
    print(f"run {args.run} replayed on {args.model} as run {new_run} (recorded | {args.model})")
    for row in rows:
        tokens = (
            f"{row['input_tokens'][0]}+{row['output_tokens'][0]} | {row['input_tokens'][1]}+{row['output_tokens'][1]}"
        )
        print(
            f"#{row['call']} {row['agent']}/{row['step']}  model {row['model'][0]} | {row['model'][1]}"
            f"  tokens {tokens}  cost ${row['cost_usd'][0]} | ${row['cost_usd'][1]}"
            f"  latency {row['latency_ms'][0]:.1f} | {row['latency_ms'][1]:.1f} ms"
            f"  output {'same' if row['same_output'] else 'differs'}"
        )
        if not row["same_output"]:
            for line in difflib.unified_diff(
                row["output"][0].splitlines(), row["output"][1].splitlines(), "recorded", args.model, lineterm=""
            ):
                print(f"    {line}")
    return 0


def register(sub: Any, targets: Targets, target_of: Callable[[argparse.Namespace, str], str]) -> None:
    """Add `traces list|show|open` and `replay` to the CLI."""
    traces = sub.add_parser("traces", help="recorded agent runs: list, show as a tree, open in Jaeger")
    traces_sub = traces.add_subparsers(dest="traces_command", required=True)
    tl = traces_sub.add_parser("list", help="recorded runs, newest first, with calls, errors, tokens and cost")
    tl.add_argument("--limit", type=int, default=50)
    tl.add_argument("--api-key", help="answer as this Interlock key: only its project's runs")
    targets(tl, "traceingest")
    tl.set_defaults(func=lambda a: cmd_traces_list(a, target_of(a, "traceingest")))
    for name, func, text in (
        ("show", cmd_traces_show, "a run as a tree of spans with timings, costs and errors"),
        ("open", cmd_traces_open, "the Jaeger UI link of a run's trace ($INTERLOCK_JAEGER_UI_URL)"),
    ):
        p = traces_sub.add_parser(name, help=text)
        p.add_argument("run", metavar="RUN")
        p.add_argument("--api-key", help="answer as this Interlock key: only its project's runs")
        targets(p, "traceingest")
        p.set_defaults(func=lambda a, f=func: f(a, target_of(a, "traceingest")))
    rp = sub.add_parser("replay", help="replay a recorded run from its recording, or on another model with a diff")
    rp.add_argument("run", metavar="RUN")
    rp.add_argument("--model", help="re-issue every call to this model and diff outputs, tokens, cost, latency")
    rp.add_argument("--api-key", help="default: $INTERLOCK_API_KEY")
    targets(rp, "traceingest", "router")
    rp.set_defaults(func=lambda a: cmd_replay(a, target_of(a, "traceingest"), target_of(a, "router")))
