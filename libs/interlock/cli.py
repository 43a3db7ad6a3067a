"""The `interlock` command: run the mesh, manage keys and budgets, read costs.

Every command that prints data takes --json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from interlock.errors import InterlockError, from_rpc_error
from interlock.mesh import SERVICES, Mesh, MeshConfig, MeshError, health_status
from interlock.pricing import NANOS_PER_USD, nanos_to_usd

DEFAULT_TARGETS = {
    "router": "127.0.0.1:50051",
    "ratelimit": "127.0.0.1:50052",
    "budget": "127.0.0.1:50053",
    "traceingest": "127.0.0.1:50054",
}
COST_DIMENSIONS = ("org", "project", "developer", "provider", "model", "agent", "run_id")


def _target(args: argparse.Namespace, service: str) -> str:
    value = getattr(args, f"{service}_target", None)
    return str(value or os.environ.get(f"INTERLOCK_{service.upper()}_TARGET") or DEFAULT_TARGETS[service])


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


def _fail(message: str, code: int = 1) -> int:
    print(f"interlock: {message}", file=sys.stderr)
    return code


# status


def cmd_status(args: argparse.Namespace) -> int:
    states = {name: health_status(_target(args, name)) for name in SERVICES}
    if args.json:
        _print_json({name: {"target": _target(args, name), "status": s} for name, s in states.items()})
    else:
        for name, state in states.items():
            print(f"{name:<12} {_target(args, name):<22} {state}")
    return 0 if all(s == "SERVING" for s in states.values()) else 1


# keys


def cmd_keys_create(args: argparse.Namespace) -> int:
    from interlock.budget.v1 import budget_pb2, budget_pb2_grpc

    with grpc.insecure_channel(_target(args, "budget")) as channel:
        stub = budget_pb2_grpc.BudgetServiceStub(channel)
        try:
            response = stub.CreateApiKey(
                budget_pb2.CreateApiKeyRequest(org=args.org, project=args.project, developer=args.developer),
                timeout=10,
            )
        except grpc.RpcError as exc:
            return _fail(str(from_rpc_error(exc)))
    if args.json:
        p = response.principal
        _print_json(
            {
                "api_key": response.api_key,
                "api_key_id": response.api_key_id,
                "org": p.org,
                "project": p.project,
                "developer": p.developer,
            }
        )
    else:
        print(response.api_key)
    return 0


# budgets


def _scope(args: argparse.Namespace) -> Any:
    from interlock.budget.v1 import budget_pb2

    if args.developer:
        kind = budget_pb2.SCOPE_KIND_DEVELOPER
    elif args.project:
        kind = budget_pb2.SCOPE_KIND_PROJECT
    else:
        kind = budget_pb2.SCOPE_KIND_ORG
    return budget_pb2.Scope(kind=kind, org=args.org, project=args.project or "", developer=args.developer or "")


def cmd_budgets_set(args: argparse.Namespace) -> int:
    from interlock.budget.v1 import budget_pb2, budget_pb2_grpc

    try:
        limit_nanos = int(Decimal(args.limit_usd) * NANOS_PER_USD)
    except ArithmeticError:
        return _fail(f"--limit-usd {args.limit_usd!r} is not a number", 2)
    with grpc.insecure_channel(_target(args, "budget")) as channel:
        try:
            budget_pb2_grpc.BudgetServiceStub(channel).SetBudget(
                budget_pb2.SetBudgetRequest(scope=_scope(args), limit_nanos=limit_nanos), timeout=10
            )
        except grpc.RpcError as exc:
            return _fail(str(from_rpc_error(exc)))
    return cmd_budgets_get(args)


def cmd_budgets_get(args: argparse.Namespace) -> int:
    from interlock.budget.v1 import budget_pb2, budget_pb2_grpc

    with grpc.insecure_channel(_target(args, "budget")) as channel:
        try:
            r = budget_pb2_grpc.BudgetServiceStub(channel).GetSpend(
                budget_pb2.GetSpendRequest(scope=_scope(args)), timeout=10
            )
        except grpc.RpcError as exc:
            return _fail(str(from_rpc_error(exc)))
    data = {
        "org": args.org,
        "project": args.project or "",
        "developer": args.developer or "",
        "limit_usd": None if r.limit_nanos < 0 else str(nanos_to_usd(r.limit_nanos)),
        "committed_usd": str(nanos_to_usd(r.committed_nanos)),
        "reserved_usd": str(nanos_to_usd(r.reserved_nanos)),
    }
    if args.json:
        _print_json(data)
    else:
        for key, value in data.items():
            print(f"{key:<14} {value if value is not None else 'no limit'}")
    return 0


# costs

_SINCE = re.compile(r"^(\d+)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: float) -> float:
    """`30m`, `12h`, `1d`, `2w` before now, or an ISO date/time."""
    match = _SINCE.match(text)
    if match:
        return now - int(match.group(1)) * _UNIT_S[match.group(2)]
    from datetime import datetime

    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: use e.g. 30m, 12h, 1d, 2w or an ISO date") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def query_costs(
    target: str, group_by: Sequence[str], since: float | None, org: str = "", project: str = ""
) -> list[dict[str, Any]]:
    from interlock.traceingest.v1 import traceingest_pb2, traceingest_pb2_grpc

    request = traceingest_pb2.QueryCostsRequest(group_by=list(group_by), org=org, project=project)
    if since is not None:
        ts = Timestamp()
        ts.FromNanoseconds(int(since * 1e9))
        request.since.CopyFrom(ts)
    with grpc.insecure_channel(target) as channel:
        try:
            response = traceingest_pb2_grpc.TraceIngestServiceStub(channel).QueryCosts(request, timeout=30)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
    return [
        {
            **dict(zip(group_by, row.keys, strict=True)),
            "requests": row.requests,
            "input_tokens": row.input_tokens,
            "output_tokens": row.output_tokens,
            "cost_usd": str(nanos_to_usd(row.cost_nanos)),
        }
        for row in response.rows
    ]


def print_cost_table(rows: Sequence[dict[str, Any]], group_by: Sequence[str]) -> None:
    columns = [*group_by, "requests", "input_tokens", "output_tokens", "cost_usd"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns))
    if not rows:
        print("(no usage)")


def cmd_costs(args: argparse.Namespace) -> int:
    group_by = [d.strip() for d in args.by.split(",") if d.strip()]
    unknown = [d for d in group_by if d not in COST_DIMENSIONS]
    if not group_by or unknown:
        return _fail(f"--by: use a comma list of {', '.join(COST_DIMENSIONS)}", 2)
    try:
        since = parse_since(args.since, time.time()) if args.since else None
        rows = query_costs(_target(args, "traceingest"), group_by, since, args.org or "", args.project or "")
    except (ValueError, InterlockError) as exc:
        return _fail(str(exc), 2 if isinstance(exc, ValueError) else 1)
    if args.json:
        _print_json(rows)
    else:
        print_cost_table(rows, group_by)
    return 0


# chat


def cmd_chat(args: argparse.Namespace) -> int:
    from interlock.client import ChatResult, Client

    try:
        client = Client(target=_target(args, "router"), api_key=args.api_key)
        messages = [{"role": "user", "content": args.prompt}]
        if args.stream and not args.json:
            for item in client.stream(model=args.model, messages=messages, max_tokens=args.max_tokens):
                if isinstance(item, ChatResult):
                    print(f"\n[{item.usage.input_tokens}+{item.usage.output_tokens} tokens, ${item.cost_usd}]")
                else:
                    print(item.text, end="", flush=True)
            return 0
        result = client.chat(model=args.model, messages=messages, max_tokens=args.max_tokens)
    except InterlockError as exc:
        return _fail(str(exc))
    if args.json:
        _print_json(
            {
                "text": result.text,
                "model": result.model,
                "provider": result.provider,
                "input_tokens": result.usage.input_tokens,
                "output_tokens": result.usage.output_tokens,
                "cost_usd": str(result.cost_usd),
                "request_id": result.request_id,
                "trace_id": result.trace_id,
            }
        )
    else:
        print(result.text)
    return 0


# models


def cmd_models(args: argparse.Namespace) -> int:
    from interlock.router.v1 import router_pb2, router_pb2_grpc

    key = args.api_key or os.environ.get("INTERLOCK_API_KEY", "")
    if not key:
        return _fail("an API key is needed: pass --api-key or set INTERLOCK_API_KEY", 2)
    with grpc.insecure_channel(_target(args, "router")) as channel:
        try:
            response = router_pb2_grpc.RouterServiceStub(channel).ListModels(
                router_pb2.ListModelsRequest(), metadata=(("authorization", f"Bearer {key}"),), timeout=10
            )
        except grpc.RpcError as exc:
            return _fail(str(from_rpc_error(exc)))
    rows = [
        {
            "model": m.name,
            "provider": m.provider,
            "upstream_model": m.upstream_model,
            "context_window": m.context_window or None,
            "input_usd_per_mtok": m.input_usd_per_mtok or None,
            "output_usd_per_mtok": m.output_usd_per_mtok or None,
            "cached_input_usd_per_mtok": m.cached_input_usd_per_mtok or None,
            "price_source": m.price_source,
        }
        for m in response.models
    ]
    if args.json:
        _print_json({"config_version": response.config_version, "models": rows})
        return 0
    columns = ["model", "provider", "context_window", "input_usd_per_mtok", "output_usd_per_mtok", "price_source"]
    table = [{c: "-" if r[c] is None else str(r[c]) for c in columns} for r in rows]
    widths = {c: max([len(c), *(len(r[c]) for r in table)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in table:
        print("  ".join(r[c].ljust(widths[c]) for c in columns))
    print(f"(routing config {response.config_version})")
    return 0


# up


def cmd_up(args: argparse.Namespace) -> int:
    cfg = MeshConfig(
        data_dir=Path(args.data_dir),
        kafka_bootstrap=args.kafka or "",
        clickhouse_url=args.clickhouse or "",
        redis_url=args.redis or "",
        routing_path=args.routing or "",
        limits_path=args.limits or "",
        router_port=args.port,
    )
    mesh = Mesh(cfg, progress=True)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    try:
        mesh.start()
    except MeshError as exc:
        return _fail(str(exc))
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        engines = f"kafka={cfg.kafka_bootstrap or 'local spool'} clickhouse={cfg.clickhouse_url or 'embedded chdb'}"
        print(f"interlock: mesh is up ({engines}); router on {cfg.target('router')}", file=sys.stderr)
        if not args.no_demo:
            from interlock.demo import run_demo

            run_demo(cfg, as_json=args.json)
        print("interlock: serving; press Ctrl-C to stop", file=sys.stderr, flush=True)
        while not stopping:
            for name, proc in mesh.processes.items():
                if proc.poll() is not None:
                    return _fail(f"{name} exited with {proc.returncode}; see {mesh.log_dir / (name + '.log')}")
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    except InterlockError as exc:
        return _fail(f"demo failed: {exc}")
    finally:
        print("interlock: stopping", file=sys.stderr)
        mesh.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interlock", description="Interlock orchestration mesh")
    sub = parser.add_subparsers(dest="command", required=True)

    def targets(p: argparse.ArgumentParser, *services: str) -> None:
        for s in services:
            p.add_argument(f"--{s}-target", help=f"{s} gRPC address (default {DEFAULT_TARGETS[s]})")
        p.add_argument("--json", action="store_true", help="print JSON")

    up = sub.add_parser("up", help="run the four services on loopback until Ctrl-C")
    up.add_argument("--no-demo", action="store_true", help="serve without running the demo")
    up.add_argument("--kafka", metavar="HOST:PORT", help="use this Kafka instead of the local spool")
    up.add_argument("--clickhouse", metavar="URL", help="use this ClickHouse HTTP URL instead of embedded chdb")
    up.add_argument("--redis", metavar="URL", help="keep rate-limit counters in this Redis")
    up.add_argument("--routing", metavar="FILE", help="routing YAML (default: models on the fake provider)")
    up.add_argument("--limits", metavar="FILE", help="rate-limit YAML")
    up.add_argument("--data-dir", default=os.environ.get("INTERLOCK_DATA_DIR", "var"), help="state directory")
    up.add_argument("--port", type=int, default=50051, help="router gRPC port")
    up.add_argument("--json", action="store_true", help="print the demo's results as JSON")
    up.set_defaults(func=cmd_up)

    st = sub.add_parser("status", help="health of the four services; exit 0 only if all are SERVING")
    targets(st, *SERVICES)
    st.set_defaults(func=cmd_status)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    kc = keys.add_parser("create", help="create an API key; prints it once")
    kc.add_argument("--org", default="default")
    kc.add_argument("--project", required=True)
    kc.add_argument("--developer", required=True)
    targets(kc, "budget")
    kc.set_defaults(func=cmd_keys_create)

    budgets = sub.add_parser("budgets", help="hard spend limits").add_subparsers(dest="budgets_command", required=True)
    for name, func in (("set", cmd_budgets_set), ("get", cmd_budgets_get)):
        b = budgets.add_parser(name, help=f"{name} the budget of an org, project or developer")
        b.add_argument("--org", default="default")
        b.add_argument("--project")
        b.add_argument("--developer")
        if name == "set":
            b.add_argument("--limit-usd", required=True, help="limit in US dollars, e.g. 25.50")
        targets(b, "budget")
        b.set_defaults(func=func)

    costs = sub.add_parser("costs", help="cost and tokens from ClickHouse, grouped")
    costs.add_argument("--by", default="project,developer,model", help=f"comma list of {', '.join(COST_DIMENSIONS)}")
    costs.add_argument("--since", help="e.g. 30m, 12h, 1d or an ISO date")
    costs.add_argument("--org")
    costs.add_argument("--project")
    targets(costs, "traceingest")
    costs.set_defaults(func=cmd_costs)

    models = sub.add_parser("models", help="routable models with provider, context window and prices")
    models.add_argument("--api-key", help="default: $INTERLOCK_API_KEY")
    targets(models, "router")
    models.set_defaults(func=cmd_models)

    chat = sub.add_parser("chat", help="send one prompt through the router")
    chat.add_argument("prompt")
    chat.add_argument("--model", default="gpt-4o-mini")
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--api-key", help="default: $INTERLOCK_API_KEY")
    chat.add_argument("--stream", action="store_true")
    targets(chat, "router")
    chat.set_defaults(func=cmd_chat)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
