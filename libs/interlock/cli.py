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
from collections.abc import Callable, Sequence
from datetime import UTC
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from interlock.errors import InterlockError, from_rpc_error
from interlock.mesh import SERVICES, Mesh, MeshConfig, MeshError, health_status
from interlock.pricing import NANOS_PER_USD, nanos_to_usd

if TYPE_CHECKING:
    from interlock.devservers import JaegerServer

DEFAULT_TARGETS = {
    "router": "127.0.0.1:50051",
    "ratelimit": "127.0.0.1:50052",
    "budget": "127.0.0.1:50053",
    "traceingest": "127.0.0.1:50054",
}


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


# budget

_WINDOW_NAMES = ("none", "day", "week", "month")


def _scope(args: argparse.Namespace) -> Any:
    from interlock.budget.v1 import budget_pb2

    if args.api_key_id:
        kind = budget_pb2.SCOPE_KIND_API_KEY
    elif args.developer:
        kind = budget_pb2.SCOPE_KIND_DEVELOPER
    elif args.project:
        kind = budget_pb2.SCOPE_KIND_PROJECT
    else:
        kind = budget_pb2.SCOPE_KIND_ORG
    return budget_pb2.Scope(
        kind=kind,
        org=args.org,
        project=args.project or "",
        developer=args.developer or "",
        api_key_id=args.api_key_id or "",
    )


def cmd_budget_set(args: argparse.Namespace) -> int:
    from interlock.budget.v1 import budget_pb2, budget_pb2_grpc

    try:
        limit_nanos = int(Decimal(args.limit_usd) * NANOS_PER_USD)
    except ArithmeticError:
        return _fail(f"--limit-usd {args.limit_usd!r} is not a number", 2)
    try:
        thresholds = [int(t) for t in args.alert_at.split(",") if t.strip()] if args.alert_at else []
    except ValueError:
        return _fail(f"--alert-at {args.alert_at!r}: use whole percentages, e.g. 50,80,100", 2)
    if args.api_key_id and not (args.project and args.developer):
        return _fail("--api-key-id needs --project and --developer", 2)
    if args.developer and not args.project:
        return _fail("--developer needs --project", 2)
    window = budget_pb2.BudgetWindow.Value(
        f"BUDGET_WINDOW_{'UNSPECIFIED' if args.window == 'none' else args.window.upper()}"
    )
    request = budget_pb2.SetBudgetRequest(
        scope=_scope(args),
        limit_nanos=limit_nanos,
        window=window,
        time_zone=args.time_zone,
        alert_thresholds_pct=thresholds,
    )
    with grpc.insecure_channel(_target(args, "budget")) as channel:
        try:
            budget_pb2_grpc.BudgetServiceStub(channel).SetBudget(request, timeout=10)
        except grpc.RpcError as exc:
            return _fail(str(from_rpc_error(exc)))
    return cmd_budget_show(args)


def _iso(ts: Timestamp, present: bool) -> str | None:
    if not present:
        return None
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def cmd_budget_show(args: argparse.Namespace) -> int:
    from interlock.budget.v1 import budget_pb2, budget_pb2_grpc

    with grpc.insecure_channel(_target(args, "budget")) as channel:
        try:
            r = budget_pb2_grpc.BudgetServiceStub(channel).GetSpend(
                budget_pb2.GetSpendRequest(scope=_scope(args)), timeout=10
            )
        except grpc.RpcError as exc:
            return _fail(str(from_rpc_error(exc)))
    window = budget_pb2.BudgetWindow.Name(r.window).removeprefix("BUDGET_WINDOW_").lower()
    data = {
        "org": args.org,
        "project": args.project or "",
        "developer": args.developer or "",
        "api_key_id": args.api_key_id or "",
        "limit_usd": None if r.limit_nanos < 0 else str(nanos_to_usd(r.limit_nanos)),
        "window": "none" if window == "unspecified" else window,
        "time_zone": r.time_zone or "UTC",
        "spend_usd": str(nanos_to_usd(r.committed_nanos)),
        "reserved_usd": str(nanos_to_usd(r.reserved_nanos)),
        "remaining_usd": None if r.remaining_nanos < 0 else str(nanos_to_usd(r.remaining_nanos)),
        "window_start": _iso(r.window_start, r.HasField("window_start")),
        "reset_at": _iso(r.reset_at, r.HasField("reset_at")),
        "alert_thresholds_pct": list(r.alert_thresholds_pct),
    }
    if args.json:
        _print_json(data)
    else:
        for key, value in data.items():
            shown = ",".join(map(str, value)) if isinstance(value, list) else value
            print(f"{key:<20} {shown if shown not in (None, '') else '-'}")
    return 0


# limits

_LIMIT_FLAGS = (("rps", "SECOND", "requests"), ("rpm", "MINUTE", "requests"), ("rpd", "DAY", "requests"),
                ("tpm", "MINUTE", "tokens"), ("tpd", "DAY", "tokens"))  # fmt: skip


def _limit_scope(args: argparse.Namespace) -> list[tuple[str, str]]:
    # The same descriptors the router sends (services/router/adapters/mesh_clients.py).
    if args.api_key_id:
        return [("api_key", args.api_key_id)]
    if args.provider and args.model:
        return [("provider", args.provider), ("model", args.model)]
    return [("project", f"{args.org}/{args.project}")]


def cmd_limits_set(args: argparse.Namespace) -> int:
    from interlock.ratelimit.v1 import ratelimit_pb2, ratelimit_pb2_grpc

    if not (args.project or args.api_key_id or (args.provider and args.model)):
        return _fail("name a scope: --project, --api-key-id, or --provider with --model", 2)
    scope = _limit_scope(args)
    mode = ratelimit_pb2.FAILURE_MODE_CLOSED if args.failure_mode == "closed" else ratelimit_pb2.FAILURE_MODE_OPEN
    by_kind: dict[str, list[Any]] = {"requests": [], "tokens": []}
    for flag, unit, kind in _LIMIT_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            by_kind[kind].append(
                ratelimit_pb2.RateLimit(
                    requests_per_unit=value,
                    unit=getattr(ratelimit_pb2, f"UNIT_{unit}"),
                    shadow_mode=args.shadow,
                    failure_mode=mode,
                    name=f"{flag}:{'/'.join(v for _, v in scope)}",
                )
            )
    if not any(by_kind.values()) and not args.clear:
        return _fail("give at least one of --rps, --rpm, --rpd, --tpm, --tpd (or --clear)", 2)
    with grpc.insecure_channel(_target(args, "ratelimit")) as channel:
        stub = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
        for kind, limits in by_kind.items():
            if not limits and not args.clear:
                continue  # leave the other kind's override as it is
            entries = ([("usage", "tokens")] if kind == "tokens" else []) + scope
            override = ratelimit_pb2.LimitOverride(
                domain=args.domain,
                entries=[ratelimit_pb2.Entry(key=k, value=v) for k, v in entries],
                rate_limits=limits,
            )
            try:
                stub.SetLimitOverride(ratelimit_pb2.SetLimitOverrideRequest(override=override), timeout=10)
            except grpc.RpcError as exc:
                return _fail(str(from_rpc_error(exc)))
    return cmd_limits_show(args)


def cmd_limits_show(args: argparse.Namespace) -> int:
    from interlock.ratelimit.v1 import ratelimit_pb2, ratelimit_pb2_grpc

    with grpc.insecure_channel(_target(args, "ratelimit")) as channel:
        try:
            response = ratelimit_pb2_grpc.RateLimitServiceStub(channel).ListLimitOverrides(
                ratelimit_pb2.ListLimitOverridesRequest(domain=args.domain), timeout=10
            )
        except grpc.RpcError as exc:
            return _fail(str(from_rpc_error(exc)))
    rows = []
    for o in response.overrides:
        entries = [(e.key, e.value) for e in o.entries]
        kind = "tokens" if entries[:1] == [("usage", "tokens")] else "requests"
        for rl in o.rate_limits:
            rows.append(
                {
                    "domain": o.domain,
                    "descriptor": "|".join(f"{k}={v}" for k, v in entries if (k, v) != ("usage", "tokens")),
                    "kind": kind,
                    "limit": rl.requests_per_unit,
                    "unit": ratelimit_pb2.Unit.Name(rl.unit).removeprefix("UNIT_").lower(),
                    "shadow_mode": rl.shadow_mode,
                    "failure_mode": ratelimit_pb2.FailureMode.Name(rl.failure_mode)
                    .removeprefix("FAILURE_MODE_")
                    .lower(),
                    "name": rl.name,
                }
            )
    if args.json:
        _print_json(rows)
    elif not rows:
        print("no runtime limit overrides")
    else:
        print(f"{'DESCRIPTOR':<32} {'KIND':<9} {'LIMIT':>10} {'UNIT':<7} {'SHADOW':<7} FAILURE")
        for r in rows:
            print(
                f"{r['descriptor']:<32} {r['kind']:<9} {r['limit']:>10} {r['unit']:<7}"
                f" {'yes' if r['shadow_mode'] else 'no':<7} {r['failure_mode']}"
            )
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


# routes

R = TypeVar("R")


def _router_call(args: argparse.Namespace, call: Callable[[Any, tuple[tuple[str, str]]], R]) -> R | int:
    """Call the router with the caller's API key; an exit code when that fails."""
    from interlock.router.v1 import router_pb2_grpc

    key = args.api_key or os.environ.get("INTERLOCK_API_KEY", "")
    if not key:
        return _fail("an API key is needed: pass --api-key or set INTERLOCK_API_KEY", 2)
    with grpc.insecure_channel(_target(args, "router")) as channel:
        try:
            return call(router_pb2_grpc.RouterServiceStub(channel), (("authorization", f"Bearer {key}"),))
        except grpc.RpcError as exc:
            return _fail(str(from_rpc_error(exc)))


def cmd_routes(args: argparse.Namespace) -> int:
    from interlock.router.v1 import router_pb2

    r = _router_call(args, lambda stub, md: stub.GetRoutes(router_pb2.GetRoutesRequest(), metadata=md, timeout=10))
    if isinstance(r, int):
        return r
    switches = [
        {
            "at": s.at.ToDatetime().isoformat() + "Z",
            "version": s.version,
            "accepted": s.accepted,
            "error": s.error or None,
        }
        for s in r.switches
    ]
    chains = dict(sorted(r.chains.items()))
    loaded_at = r.loaded_at.ToDatetime().isoformat() + "Z"
    if args.json:
        _print_json({"live_version": r.live_version, "loaded_at": loaded_at, "chains": chains, "switches": switches})
        return 0
    print(f"live version {r.live_version} (loaded {loaded_at})")
    for name, chain in chains.items():
        print(f"  {name:<28} {chain}")
    print("recent switches:")
    for s in switches:
        state = "live" if s["accepted"] else f"REFUSED: {s['error']}"
        print(f"  {s['at']}  {s['version']}  {state}")
    return 0


# models


def cmd_models(args: argparse.Namespace) -> int:
    from interlock.router.v1 import router_pb2

    response = _router_call(
        args, lambda stub, md: stub.ListModels(router_pb2.ListModelsRequest(), metadata=md, timeout=10)
    )
    if isinstance(response, int):
        return response
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


# config


def cmd_config_validate(args: argparse.Namespace) -> int:
    """Validate a routing file as the router would, without running anything."""
    import yaml

    from interlock.services.router.domain.routing import RoutingConfigError, config_version, parse_routing_config

    errors: list[tuple[str, str]] = []
    version = ""
    try:
        document = yaml.safe_load(Path(args.file).read_text())
        overrides: Any = {}
        if args.price_overrides:
            loaded = yaml.safe_load(Path(args.price_overrides).read_text()) or {}
            overrides = loaded.get("models", {}) if isinstance(loaded, dict) else None
            if not isinstance(overrides, dict):
                errors.append((args.price_overrides, "must be a mapping with `models`"))
        if not isinstance(document, dict):
            errors.append((args.file, "must be a YAML mapping"))
        if not errors:
            # The same hash the router logs and reports as config_version for this file.
            version = config_version(document, overrides)
            config = parse_routing_config(document, version, overrides)
    except RoutingConfigError as exc:
        errors.extend(exc.errors)
    except (OSError, yaml.YAMLError) as exc:
        errors.append((args.file, f"cannot read: {exc}"))
    if args.json:
        if errors:
            _print_json({"valid": False, "errors": [{"path": p, "message": m} for p, m in errors]})
        else:
            _print_json({"valid": True, "version": version, "models": sorted(config.models)})
    elif errors:
        for path, message in errors:
            print(f"{path}: {message}" if path else message)
    else:
        print(version)
    return 1 if errors else 0


# up


JAEGER_UI_URL_ENV = "INTERLOCK_JAEGER_UI_URL"


def _start_jaeger(data_dir: Path) -> JaegerServer:
    """A JaegerServer whose UI is where INTERLOCK_JAEGER_UI_URL says; built into the cache if missing."""
    from urllib.parse import urlsplit

    from interlock._settings import load_settings
    from interlock.devservers import JaegerServer, free_port
    from interlock.traces_cli import TracesSettings

    ui_port = urlsplit(load_settings(TracesSettings, "INTERLOCK_").jaeger_ui_url).port or 16686
    print(f"starting jaeger (UI on 127.0.0.1:{ui_port})", file=sys.stderr, flush=True)
    return JaegerServer(data_dir / "jaeger", otlp_port=free_port(), query_port=ui_port).start()


def cmd_up(args: argparse.Namespace) -> int:
    jaeger: JaegerServer | None = None
    if args.jaeger:
        from interlock.devservers import DevServerError

        try:
            jaeger = _start_jaeger(Path(args.data_dir))
        except DevServerError as exc:
            return _fail(str(exc))
        # `interlock traces ...` run from this process's children (and the demo) find the UI here.
        os.environ[JAEGER_UI_URL_ENV] = jaeger.query_url
    cfg = MeshConfig(
        data_dir=Path(args.data_dir),
        kafka_bootstrap=args.kafka or "",
        clickhouse_url=args.clickhouse or "",
        redis_url=args.redis or "",
        routing_path=args.routing or "",
        limits_path=args.limits or "",
        router_port=args.port,
        jaeger_otlp_endpoint=jaeger.otlp_endpoint if jaeger is not None else "",
    )
    mesh = Mesh(cfg, progress=True)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    try:
        mesh.start()
    except MeshError as exc:
        if jaeger is not None:
            jaeger.stop()
        return _fail(str(exc))
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        engines = f"kafka={cfg.kafka_bootstrap or 'local spool'} clickhouse={cfg.clickhouse_url or 'embedded chdb'}"
        print(f"interlock: mesh is up ({engines}); router on {cfg.target('router')}", file=sys.stderr)
        print(
            f"interlock: OpenAI/Anthropic-compatible HTTP on http://{cfg.host}:{cfg.router_http_port}/v1",
            file=sys.stderr,
        )
        if jaeger is not None:
            print(f"interlock: Jaeger UI on {jaeger.query_url}", file=sys.stderr)
        if not cfg.routing_path:
            from interlock.services.router.domain.defaults import default_routing_document

            _, banner = default_routing_document(f"http://{cfg.host}:{cfg.fake_provider_port}", os.environ)
            print("interlock: models (set a provider's API key to call it for real):", file=sys.stderr)
            for line in banner:
                print(f"  {line}", file=sys.stderr)
        if not args.no_demo:
            from interlock.demo import run_demo

            run_demo(cfg, as_json=args.json)
        print("interlock: serving; press Ctrl-C to stop", file=sys.stderr, flush=True)
        while not stopping:
            for name, proc in mesh.processes.items():
                if proc.poll() is not None:
                    return _fail(f"{name} exited with {proc.returncode}; see {mesh.log_dir / (name + '.log')}")
            if jaeger is not None and not jaeger.running:
                return _fail(f"jaeger exited; see {jaeger.log_path}")
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    except InterlockError as exc:
        return _fail(f"demo failed: {exc}")
    finally:
        print("interlock: stopping", file=sys.stderr)
        mesh.stop()
        # After trace-ingest, which forwards its last spans to Jaeger as it stops.
        if jaeger is not None:
            jaeger.stop()


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
    up.add_argument(
        "--jaeger",
        action="store_true",
        help=f"also run Jaeger (built from its Go module on first use) with its UI at ${JAEGER_UI_URL_ENV}",
    )
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

    budget = sub.add_parser("budget", help="hard spend limits").add_subparsers(dest="budget_command", required=True)
    for name, func, text in (
        ("set", cmd_budget_set, "set the budget of an org, project, developer or API key"),
        ("show", cmd_budget_show, "limit, spend, reserved, remaining and reset time of a budget"),
    ):
        b = budget.add_parser(name, help=text)
        b.add_argument("--org", default="default")
        b.add_argument("--project")
        b.add_argument("--developer")
        b.add_argument("--api-key-id", help="public id of an API key (with --project and --developer)")
        if name == "set":
            b.add_argument("--limit-usd", required=True, help="limit in US dollars, e.g. 25.50")
            b.add_argument("--window", choices=_WINDOW_NAMES, default="none", help="period that resets (default none)")
            b.add_argument("--time-zone", default="UTC", help="IANA zone of the window's calendar, e.g. Europe/Berlin")
            b.add_argument("--alert-at", metavar="PCTS", default="", help="alert thresholds in percent, e.g. 50,80,100")
        targets(b, "budget")
        b.set_defaults(func=func)

    # costs (totals, top N, per run, day-over-day, chart, reprice), db migrate, kafka topics create
    from interlock import costs_cli

    costs_cli.register(sub, targets, _target)

    # traces list/show/open, replay
    from interlock import traces_cli

    traces_cli.register(sub, targets, _target)

    routes = sub.add_parser("routes", help="the router's live routing config version and recent switches")
    routes.add_argument("--api-key", help="default: $INTERLOCK_API_KEY")
    targets(routes, "router")
    routes.set_defaults(func=cmd_routes)

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

    limits = sub.add_parser("limits", help="runtime rate limits (RPM/TPM overrides held by the rate-limiter)")
    limits_sub = limits.add_subparsers(dest="limits_command", required=True)
    ls = limits_sub.add_parser("set", help="set the limits of a project, API key or provider+model")
    ls.add_argument("--org", default="default")
    ls.add_argument("--project")
    ls.add_argument("--api-key-id")
    ls.add_argument("--provider")
    ls.add_argument("--model")
    for flag, unit, kind in _LIMIT_FLAGS:
        ls.add_argument(f"--{flag}", type=int, help=f"{kind} per {unit.lower()}")
    ls.add_argument("--shadow", action="store_true", help="count and log only, never refuse")
    ls.add_argument("--failure-mode", choices=("open", "closed"), default="open", help="when the limiter is down")
    ls.add_argument("--clear", action="store_true", help="remove the kinds not given (both, with no limit flag)")
    ls.add_argument("--domain", default="interlock")
    targets(ls, "ratelimit")
    ls.set_defaults(func=cmd_limits_set)
    lshow = limits_sub.add_parser("show", help="list the runtime limit overrides")
    lshow.add_argument("--domain", default="interlock")
    targets(lshow, "ratelimit")
    lshow.set_defaults(func=cmd_limits_show)

    cfg = sub.add_parser("config", help="routing config files").add_subparsers(dest="config_command", required=True)
    cv = cfg.add_parser("validate", help="check a routing YAML; print its version, or every error with its path")
    cv.add_argument("file", metavar="FILE")
    cv.add_argument("--price-overrides", metavar="FILE", help="price overrides YAML the router would load with it")
    cv.add_argument("--json", action="store_true", help="print JSON")
    cv.set_defaults(func=cmd_config_validate)
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
