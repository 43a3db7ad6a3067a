"""`interlock costs` (totals, top N, per run, day-over-day, chart, reprice), `interlock db migrate`
and `interlock kafka topics create`: the cost-analytics commands, registered by `interlock.cli`."""

from __future__ import annotations

import argparse
import asyncio
import csv
import html
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from interlock.errors import InterlockError, from_rpc_error
from interlock.pricing import nanos_to_usd

COST_DIMENSIONS = ("org", "project", "developer", "provider", "model", "agent", "run_id", "day", "hour")
METRICS = ("requests", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "cost_usd")
Targets = Callable[..., None]


def _fail(message: str, code: int = 1) -> int:
    print(f"interlock: {message}", file=sys.stderr)
    return code


def _timestamp(unix_s: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(unix_s * 1e9))
    return ts


def fetch_costs(
    target: str,
    group_by: Sequence[str],
    *,
    since: float | None = None,
    until: float | None = None,
    org: str = "",
    project: str = "",
    limit: int = 0,
    repriced: bool = False,
    api_key: str = "",
) -> list[dict[str, Any]]:
    """QueryCosts rows as dicts: the group's keys by name, then the sums (cost as exact decimal text)."""
    from interlock.traceingest.v1 import traceingest_pb2, traceingest_pb2_grpc

    request = traceingest_pb2.QueryCostsRequest(
        group_by=list(group_by), org=org, project=project, limit=limit, repriced=repriced
    )
    if since is not None:
        request.since.CopyFrom(_timestamp(since))
    if until is not None:
        request.until.CopyFrom(_timestamp(until))
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
    with grpc.insecure_channel(target) as channel:
        try:
            response = traceingest_pb2_grpc.TraceIngestServiceStub(channel).QueryCosts(
                request, timeout=30, metadata=metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
    return [
        {
            **dict(zip(group_by, row.keys, strict=True)),
            "requests": row.requests,
            "input_tokens": row.input_tokens,
            "cached_input_tokens": row.cached_input_tokens,
            "output_tokens": row.output_tokens,
            "reasoning_tokens": row.reasoning_tokens,
            "cost_usd": str(nanos_to_usd(row.cost_nanos)),
            "cost_nanos": row.cost_nanos,
        }
        for row in response.rows
    ]


def day_over_day(rows: Sequence[dict[str, Any]], by: Sequence[str]) -> list[dict[str, Any]]:
    """Rows grouped by (day, *by) -> per group and day: cost, the previous day's cost, the change."""
    series: dict[tuple[str, ...], dict[str, int]] = {}
    for r in rows:
        series.setdefault(tuple(str(r[d]) for d in by), {})[str(r["day"])] = int(r["cost_nanos"])
    out: list[dict[str, Any]] = []
    for keys, days in series.items():
        for day in sorted(days):
            cost = days[day]
            prev = days.get((date.fromisoformat(day) - timedelta(days=1)).isoformat(), 0)
            change = "" if prev == 0 else f"{(cost - prev) * 100 / prev:+.1f}%"
            out.append(
                {
                    "day": day,
                    **dict(zip(by, keys, strict=True)),
                    "cost_usd": str(nanos_to_usd(cost)),
                    "prev_day_cost_usd": str(nanos_to_usd(prev)),
                    "change_usd": str(nanos_to_usd(cost - prev)),
                    "change_pct": change or "new",
                }
            )
    out.sort(key=lambda r: (r["day"], *(str(r[d]) for d in by)))
    return out


def print_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str) -> None:
    """As an aligned table, JSON or CSV."""
    if fmt == "json":
        print(json.dumps(list(rows), indent=2, default=str))
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([r.get(c, "") for c in columns] for r in rows)
        return
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip())
    if not rows:
        print("(no usage)")


def _format(args: argparse.Namespace) -> str:
    return "json" if args.json else "csv" if args.csv else "table"


def _api_key(args: argparse.Namespace) -> str:
    return str(args.api_key or "")


def cmd_costs(args: argparse.Namespace, target: str) -> int:
    from interlock.cli import parse_since

    by = [d.strip() for d in args.by.split(",") if d.strip()]
    if args.per_run:
        by = ["run_id", *(d for d in by if d in ("agent",))]
    unknown = [d for d in by if d not in COST_DIMENSIONS]
    if not by or unknown or len(set(by)) != len(by):
        return _fail(f"--by: use a comma list of {', '.join(COST_DIMENSIONS)}", 2)
    now = time.time()
    try:
        since = parse_since(args.since, now) if args.since else None
        until = parse_since(args.until, now) if args.until else None
        if args.change:
            grouped = [d for d in by if d not in ("day", "hour")]
            since = since if since is not None else now - 14 * 86400
            rows = fetch_costs(
                target,
                ["day", *grouped],
                since=since,
                until=until,
                org=args.org or "",
                project=args.project or "",
                repriced=args.repriced,
                api_key=_api_key(args),
            )
            changes = day_over_day(rows, grouped)
            columns = ["day", *grouped, "cost_usd", "prev_day_cost_usd", "change_usd", "change_pct"]
            print_rows(changes, columns, _format(args))
            return 0
        rows = fetch_costs(
            target,
            by,
            since=since,
            until=until,
            org=args.org or "",
            project=args.project or "",
            limit=args.top or 0,
            repriced=args.repriced,
            api_key=_api_key(args),
        )
    except (ValueError, InterlockError) as exc:
        return _fail(str(exc), 2 if isinstance(exc, ValueError) else 1)
    if args.per_run:
        rows = [r for r in rows if r["run_id"]]  # usage outside any run has no per-run cost
    if by in (["day"], ["hour"]):
        rows.sort(key=lambda r: str(r[by[0]]))  # a time series reads in time order
    print_rows(rows, [*by, *METRICS], _format(args))
    return 0


def render_chart_html(title: str, points: Sequence[tuple[str, int]]) -> str:
    """A self-contained HTML page with an SVG bar chart of cost (nano-dollars) per bucket."""
    width, height, pad_l, pad_b, pad_t = 900, 360, 80, 60, 30
    plot_w, plot_h = width - pad_l - 20, height - pad_b - pad_t
    top = max([v for _, v in points] or [1]) or 1
    bar_w = plot_w / max(1, len(points))
    bars, labels = [], []
    step = max(1, len(points) // 12)  # at most ~12 axis labels
    for i, (bucket, nanos) in enumerate(points):
        h = plot_h * nanos / top
        x = pad_l + i * bar_w
        usd = nanos_to_usd(nanos)
        bars.append(
            f'<rect x="{x + 1:.1f}" y="{pad_t + plot_h - h:.1f}" width="{max(1.0, bar_w - 2):.1f}"'
            f' height="{h:.1f}" fill="#3b6ea8"><title>{html.escape(bucket)}: ${usd}</title></rect>'
        )
        if i % step == 0:
            labels.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{height - pad_b + 16}" font-size="11"'
                f' text-anchor="middle">{html.escape(bucket)}</text>'
            )
    ticks = []
    for k in range(5):
        value = top * k // 4
        y = pad_t + plot_h - plot_h * k / 4
        ticks.append(
            f'<line x1="{pad_l}" x2="{width - 20}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{pad_l - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">${nanos_to_usd(value):.6f}</text>'
        )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">'
        f'<text x="{pad_l}" y="18" font-size="14">{html.escape(title)}</text>'
        + "".join(ticks)
        + "".join(bars)
        + "".join(labels)
        + "</svg>"
    )
    total = nanos_to_usd(sum(v for _, v in points))
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body>{svg}<p>Total: ${total} over {len(points)} buckets (from Interlock trace-ingest).</p></body></html>\n"
    )


def cmd_costs_chart(args: argparse.Namespace, target: str) -> int:
    from interlock.cli import parse_since

    out = Path(args.out)
    if out.suffix.lower() not in (".html", ".htm", ".svg"):
        return _fail("--out: write .html or .svg (the chart is self-contained SVG, no plotting library)", 2)
    bucket = "hour" if args.hourly else "day"
    try:
        since = parse_since(args.since, time.time())
        rows = fetch_costs(
            target, [bucket], since=since, org=args.org or "", project=args.project, api_key=_api_key(args)
        )
    except (ValueError, InterlockError) as exc:
        return _fail(str(exc), 2 if isinstance(exc, ValueError) else 1)
    points = sorted((str(r[bucket]), int(r["cost_nanos"])) for r in rows)
    page = render_chart_html(f"Interlock cost per {bucket}: project {args.project} (since {args.since})", points)
    if out.suffix.lower() == ".svg":
        start = page.index("<svg")
        page = page[start : page.index("</svg>") + len("</svg>")] + "\n"
    out.write_text(page)
    if args.json:
        print(json.dumps({"out": str(out), "buckets": len(points), "points": points}))
    else:
        print(f"wrote {out} ({len(points)} {bucket}s)")
    return 0


def _clickhouse_client(args: argparse.Namespace) -> Any:
    from interlock.services.traceingest.adapters.clickhouse import EmbeddedClickHouse, HttpClickHouse

    url = args.clickhouse or os.environ.get("INTERLOCK_TRACEINGEST_CLICKHOUSE_URL", "")
    if url:
        return HttpClickHouse(url)
    return EmbeddedClickHouse(Path(args.chdb_path or Path(args.data_dir) / "chdb"))


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from interlock.services.traceingest.adapters.clickhouse import ClickHouseError
    from interlock.services.traceingest.adapters.migrations import MigrationError, MigrationRunner
    from interlock.services.traceingest.adapters.store import check_database_name

    async def run() -> tuple[list[Any], list[Any]]:
        client = _clickhouse_client(args)
        try:
            runner = MigrationRunner(client, check_database_name(args.database))
            applied_now = await runner.migrate()
            return applied_now, await runner.applied()
        finally:
            await client.close()

    try:
        applied_now, applied = asyncio.run(run())
    except (ClickHouseError, MigrationError, ValueError) as exc:
        return _fail(str(exc))
    if args.json:
        print(
            json.dumps(
                {
                    "applied_now": [{"version": m.version, "name": m.name} for m in applied_now],
                    "applied": [asdict(m) for m in applied],
                },
                indent=2,
            )
        )
    else:
        for m in applied_now:
            print(f"applied {m.version:03d}_{m.name}")
        newest = applied[-1] if applied else None
        version = f"{newest.version:03d}_{newest.name}" if newest else "none"
        print(f"schema is at {version} ({len(applied_now)} applied now)")
    return 0


def cmd_costs_reprice(args: argparse.Namespace) -> int:
    from interlock.cli import parse_since
    from interlock.services.traceingest.adapters.clickhouse import ClickHouseError
    from interlock.services.traceingest.adapters.repricing import ListPrices, reprice_usage
    from interlock.services.traceingest.adapters.store import TraceStore

    try:
        since = parse_since(args.since, time.time())
    except ValueError as exc:
        return _fail(str(exc), 2)

    async def run() -> Any:
        store = TraceStore(_clickhouse_client(args), args.database)
        try:
            return await reprice_usage(store, int(since * 1000), ListPrices())
        finally:
            await store.close()

    try:
        report = asyncio.run(run())
    except (ClickHouseError, ValueError) as exc:
        return _fail(str(exc))
    data = asdict(report)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(
            f"repriced {report.repriced} of {report.events} events since"
            f" {datetime.fromtimestamp(since, UTC).isoformat()}: was ${nanos_to_usd(report.billed_nanos)},"
            f" now ${nanos_to_usd(report.repriced_nanos)}"
        )
        for model in report.unpriced_models:
            print(f"  no price for {model}; kept as billed")
        print("read them with: interlock costs --repriced ...")
    return 0


def cmd_kafka_topics_create(args: argparse.Namespace) -> int:
    from interlock.services.traceingest.adapters.kafka_topics import ensure_topics
    from interlock.services.traceingest.config import TraceIngestSettings
    from interlock.services.traceingest.main import usage_topic_specs

    bootstrap = args.kafka or os.environ.get("INTERLOCK_TRACEINGEST_KAFKA_BOOTSTRAP", "")
    if not bootstrap:
        return _fail("--kafka HOST:PORT is required", 2)
    settings = TraceIngestSettings(
        usage_topic_partitions=args.partitions,
        usage_topic_retention_hours=args.retention_hours,
        topic_replication_factor=args.replication_factor,
    )
    specs = usage_topic_specs(settings)
    try:
        created = asyncio.run(ensure_topics(bootstrap, specs))
    except Exception as exc:  # noqa: BLE001 - any admin failure is reported, not a traceback
        return _fail(f"creating topics failed: {exc}")
    if args.json:
        print(json.dumps({"created": created, "topics": [asdict(s) for s in specs]}, indent=2))
    else:
        for s in specs:
            state = "created" if s.name in created else "exists"
            print(f"{s.name:<28} {state:<8} partitions={s.partitions} retention_ms={s.retention_ms}")
    return 0


def register(sub: Any, targets: Targets, target_of: Callable[[argparse.Namespace, str], str]) -> None:
    """Add `costs` (with `chart` and `reprice`), `db migrate` and `kafka topics create` to the CLI."""

    def common_query(p: argparse.ArgumentParser) -> None:
        p.add_argument("--org")
        p.add_argument("--api-key", help="answer as this Interlock key: only its project's costs")
        targets(p, "traceingest")

    def clickhouse_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--clickhouse", metavar="URL", help="ClickHouse HTTP URL (default: embedded chdb)")
        p.add_argument("--data-dir", default=os.environ.get("INTERLOCK_DATA_DIR", "var"), help="embedded state dir")
        p.add_argument("--chdb-path", help="embedded ClickHouse data dir (default <data-dir>/chdb)")
        p.add_argument("--database", default="interlock")
        p.add_argument("--json", action="store_true", help="print JSON")

    costs = sub.add_parser("costs", help="cost and tokens from ClickHouse: totals, top N, per run, day-over-day")
    costs.add_argument("--by", default="project,developer,model", help=f"comma list of {', '.join(COST_DIMENSIONS)}")
    costs.add_argument("--since", help="e.g. 30m, 12h, 1d or an ISO date")
    costs.add_argument("--until", help="end of the range (exclusive), same forms as --since")
    costs.add_argument("--project")
    costs.add_argument("--top", type=int, metavar="N", help="only the N costliest groups")
    costs.add_argument("--per-run", action="store_true", help="cost per agent run (groups by run_id)")
    costs.add_argument("--change", action="store_true", help="day-over-day change per group (default last 14 days)")
    costs.add_argument("--repriced", action="store_true", help="costs from the newest `costs reprice`")
    costs.add_argument("--csv", action="store_true", help="print CSV")
    common_query(costs)
    costs.set_defaults(func=lambda a: cmd_costs(a, target_of(a, "traceingest")))
    costs_sub = costs.add_subparsers(dest="costs_command")

    chart = costs_sub.add_parser("chart", help="cost over time of one project as an HTML (or SVG) chart")
    chart.add_argument("--project", required=True)
    chart.add_argument("--out", required=True, help="cost.html or cost.svg")
    chart.add_argument("--since", default="30d")
    chart.add_argument("--hourly", action="store_true", help="one bar an hour instead of a day")
    common_query(chart)
    chart.set_defaults(func=lambda a: cmd_costs_chart(a, target_of(a, "traceingest")))

    reprice = costs_sub.add_parser("reprice", help="recompute costs from stored tokens at today's prices")
    reprice.add_argument("--since", required=True, help="events at or after this (ISO date or 30d)")
    clickhouse_args(reprice)
    reprice.set_defaults(func=cmd_costs_reprice)

    db = sub.add_parser("db", help="ClickHouse schema").add_subparsers(dest="db_command", required=True)
    migrate = db.add_parser("migrate", help="apply pending schema migrations (versioned files)")
    clickhouse_args(migrate)
    migrate.set_defaults(func=cmd_db_migrate)

    kafka = sub.add_parser("kafka", help="Kafka topics").add_subparsers(dest="kafka_command", required=True)
    topics = kafka.add_parser("topics", help="usage topics").add_subparsers(dest="topics_command", required=True)
    create = topics.add_parser("create", help="create the usage topic and its dead-letter topic")
    create.add_argument("--kafka", metavar="HOST:PORT", help="bootstrap servers")
    create.add_argument("--partitions", type=int, default=6)
    create.add_argument("--retention-hours", type=int, default=168)
    create.add_argument("--replication-factor", type=int, default=1)
    create.add_argument("--json", action="store_true", help="print JSON")
    create.set_defaults(func=cmd_kafka_topics_create)
