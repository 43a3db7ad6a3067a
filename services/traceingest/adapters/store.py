"""Trace-ingest's tables in ClickHouse: row encoding, the usage insert, and the queries it answers.

The DDL lives in versioned files under `migrations/`, applied by `MigrationRunner`.

Exactly once in effect, for usage: a record may arrive more than once (the outbox
re-sends after a crash; the consumer re-reads a batch whose offsets it did not commit).
The raw table is a ReplacingMergeTree keyed by event id and read with FINAL, but its
collapse happens at merge time, after the rollup views have counted every copy. So copies
are kept out at insert: (1) the batch drops event ids that are already stored, which is
exact because events are keyed by project and one consumer owns a partition at a time;
(2) the insert carries a deduplication token made from its event ids, so a retried insert
whose first attempt landed after all (a timeout) is dropped by ClickHouse before any view
fires.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from interlock.services.traceingest.adapters.clickhouse import (
    ClickHouseClient,
    ClickHouseError,
    Column,
    QueryParams,
    format_unix,
)
from interlock.services.traceingest.adapters.migrations import MigrationRunner
from interlock.services.traceingest.domain import CostQuery, CostRow, Dimension, SpanRecord, UsageRecord
from interlock.services.traceingest.domain.runs import RunCall, RunSummary, run_call_from_span, without_bodies

log = logging.getLogger("interlock.traceingest.store")

USAGE_TABLE = "usage_events"
SPANS_TABLE = "spans"
HOURLY_TABLE = "usage_hourly"
REPRICES_TABLE = "usage_reprices"
RUN_CALLS_TABLE = "run_calls"
_PRESENCE_CHUNK = 2000
"""Event ids asked about per presence query (they travel as one query parameter)."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

USAGE_COLUMNS = (
    "event_id",
    "org",
    "project",
    "developer",
    "api_key_id",
    "provider",
    "model",
    "input_tokens",
    "output_tokens",
    "cost_nanos",
    "status",
    "occurred_at",
    "trace_id",
    "run_id",
    "agent",
    "cached_input_tokens",
    "reasoning_tokens",
    "cache_write_tokens",
    "config_version",
    "latency_ms",
    "attempt",
    "schema_version",
    "provider_attempts",
    "request_id",
)
_USAGE_TYPES = {
    "org": "LowCardinality(String)",
    "provider": "LowCardinality(String)",
    "model": "LowCardinality(String)",
    "status": "LowCardinality(String)",
    "occurred_at": "DateTime64(3, 'UTC')",
    "attempt": "UInt32",
    "schema_version": "UInt8",
    "provider_attempts": "UInt32",
}
_USAGE_INT_COLUMNS = {
    "input_tokens",
    "output_tokens",
    "cost_nanos",
    "cached_input_tokens",
    "reasoning_tokens",
    "cache_write_tokens",
    "latency_ms",
}
USAGE_INSERT_COLUMNS: tuple[Column, ...] = tuple(
    (name, _USAGE_TYPES.get(name, "Int64" if name in _USAGE_INT_COLUMNS else "String")) for name in USAGE_COLUMNS
)
"""The columns a usage insert writes, with their types in `usage_events` (migrations 001, 002, 006, 007)."""
_USAGE_FIELDS = tuple("occurred_at_ms" if name == "occurred_at" else name for name in USAGE_COLUMNS)
"""The UsageRecord attribute each of USAGE_COLUMNS is read from."""
SPAN_COLUMNS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "service_name",
    "name",
    "kind",
    "start_time",
    "end_time",
    "status_code",
    "status_message",
    "scope_name",
    "attributes",
    "resource_attributes",
)
RUN_CALL_COLUMNS = (
    "run_id",
    "trace_id",
    "span_id",
    "org",
    "project",
    "agent",
    "step",
    "request_id",
    "request_model",
    "response_model",
    "provider",
    "request_json",
    "response_json",
    "request_digest",
    "message_digests",
    "input_tokens",
    "output_tokens",
    "cost_nanos",
    "latency_ms",
    "status",
    "error",
    "config_version",
    "attempts",
    "start_time",
)


def check_database_name(name: str) -> str:
    """`name` if it is a plain identifier (it is written into DDL), else ValueError."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"database name {name!r} must match {_IDENTIFIER.pattern}")
    return name


def _dedup_token(keys: Iterable[tuple[str, str, str]]) -> str:
    digest = hashlib.sha256()
    for org, project, event_id in sorted(keys):
        digest.update(f"{org}\x00{project}\x00{event_id}\x01".encode())
    return "usage-" + digest.hexdigest()


def _json_each_row(rows: Iterable[Mapping[str, object]]) -> bytes:
    return b"".join(json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in rows)


class TraceStore:
    """Usage and span rows in database `database` of one ClickHouse engine."""

    def __init__(self, client: ClickHouseClient, database: str, *, max_rows: int = 10_000) -> None:
        self.client = client
        self.database = check_database_name(database)
        self.max_rows = max_rows
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()

    def _table(self, name: str) -> str:
        return f"{self.database}.{name}"

    async def ensure_schema(self) -> None:
        """Apply pending schema migrations (creating the database if missing); later calls are free."""
        if self._schema_ready:
            return
        async with self._schema_lock:
            if self._schema_ready:
                return
            await MigrationRunner(self.client, self.database).migrate()
            self._schema_ready = True

    async def start(self) -> None:
        """Create the tables now if ClickHouse is up; otherwise the first write creates them."""
        try:
            await self.ensure_schema()
        except ClickHouseError as exc:
            log.warning("clickhouse unavailable at start; will retry", extra={"fields": {"error": str(exc)}})

    async def insert_usage(self, records: Sequence[UsageRecord]) -> int:
        """Store the records not stored yet, as one INSERT; returns how many were new.

        Raises ClickHouseError, after which none may be assumed stored; calling again with
        the same records is safe (see the module docstring).
        """
        if not records:
            return 0
        await self.ensure_schema()
        unique: dict[tuple[str, str, str], UsageRecord] = {}
        for record in records:
            unique.setdefault((record.org, record.project, record.event_id), record)
        stored = await self._stored_keys(list(unique.values()))
        fresh = {key: r for key, r in unique.items() if key not in stored}
        if not fresh:
            return 0
        rows = list(fresh.values())
        # Column-oriented: one list per column, encoded by the client in ClickHouse's Native format.
        data = [[getattr(r, name) for r in rows] for name in _USAGE_FIELDS]
        await self.client.insert_columns(
            self._table(USAGE_TABLE),
            USAGE_INSERT_COLUMNS,
            data,
            settings={"insert_deduplication_token": _dedup_token(fresh)},
        )
        return len(fresh)

    async def _stored_keys(self, records: Sequence[UsageRecord]) -> set[tuple[str, str, str]]:
        """Which of `records` are in usage_events already, as (org, project, event_id)."""
        found: set[tuple[str, str, str]] = set()
        for start in range(0, len(records), _PRESENCE_CHUNK):
            chunk = records[start : start + _PRESENCE_CHUNK]
            # Copies of an event carry its occurred_at, so the time range prunes partitions.
            # org, project and event_id together are the table's sorting key: the key index
            # finds the granules of these ids without reading the rest of their projects.
            sql = (
                f"SELECT org, project, event_id FROM {self._table(USAGE_TABLE)}"
                " WHERE org IN {orgs:Array(String)} AND project IN {projects:Array(String)}"
                " AND event_id IN {ids:Array(String)}"
                " AND occurred_at BETWEEN fromUnixTimestamp64Milli({lo:Int64}, 'UTC')"
                " AND fromUnixTimestamp64Milli({hi:Int64}, 'UTC')"
            )
            params: QueryParams = {
                "orgs": sorted({r.org for r in chunk}),
                "projects": sorted({r.project for r in chunk}),
                "ids": [r.event_id for r in chunk],
                "lo": max(0, min(r.occurred_at_ms for r in chunk)),
                "hi": max(0, max(r.occurred_at_ms for r in chunk)),
            }
            found.update((str(r[0]), str(r[1]), str(r[2])) for r in await self.client.select(sql, params))
        return found

    async def insert_spans(self, spans: Sequence[SpanRecord]) -> None:
        """Insert `spans` as one INSERT, and the run calls they record as another (bodies go to
        `run_calls` only); raises ClickHouseError. Both tables collapse copies of a retried batch."""
        if not spans:
            return
        await self.ensure_schema()
        calls = [c for c in map(run_call_from_span, spans) if c is not None]
        if calls:
            await self.insert_run_calls(calls)
        spans = [without_bodies(s) for s in spans]
        rows = (
            {
                "trace_id": s.trace_id,
                "span_id": s.span_id,
                "parent_span_id": s.parent_span_id,
                "service_name": s.service_name,
                "name": s.name,
                "kind": s.kind,
                "start_time": format_unix(s.start_time_ns, 9),
                "end_time": format_unix(s.end_time_ns, 9),
                "status_code": s.status_code,
                "status_message": s.status_message,
                "scope_name": s.scope_name,
                "attributes": dict(s.attributes),
                "resource_attributes": dict(s.resource_attributes),
            }
            for s in spans
        )
        await self.client.insert_json_rows(self._table(SPANS_TABLE), SPAN_COLUMNS, _json_each_row(rows))

    async def query_costs(self, query: CostQuery) -> list[CostRow]:
        """Sums per group, costliest first. Only allow-listed column names enter the SQL text.

        Whole hours come from the hourly rollup when every dimension is in it; the raw
        table (FINAL) answers the rest: run ids, repriced costs, and the partial hours at
        either end of the time range.
        """
        await self.ensure_schema()
        params: dict[str, str | int] = {}
        tenant: list[str] = []
        if query.org:
            tenant.append("org = {org:String}")
            params["org"] = query.org
        if query.project:
            tenant.append("project = {project:String}")
            params["project"] = query.project
        if query.since is not None:
            params["since_ms"] = int(query.since.timestamp() * 1000)
        if query.until is not None:
            params["until_ms"] = int(query.until.timestamp() * 1000)
        use_rollup = all(d.in_rollups for d in query.group_by) and not query.repriced
        source = self._rollup_source(query, tenant) if use_rollup else self._raw_source(query, tenant, whole=True)
        keys = "".join(f"{_dimension_sql(d)} AS key_{d.value}, " for d in query.group_by)
        group = f"GROUP BY {', '.join(f'key_{d.value}' for d in query.group_by)}" if query.group_by else ""
        order = "".join(f", key_{d.value}" for d in query.group_by)
        limit = min(query.limit or self.max_rows, self.max_rows)
        sql = (
            f"SELECT {keys}sum(requests) AS total_requests, sum(input_tokens) AS total_input,"
            " sum(output_tokens) AS total_output, sum(cost_nanos) AS total_cost,"
            " sum(cached_input_tokens) AS total_cached, sum(reasoning_tokens) AS total_reasoning"
            f" FROM ({source}) {group}"
            # Without GROUP BY an empty table still yields one all-zero row; HAVING drops it.
            f" HAVING total_requests > 0 ORDER BY total_cost DESC{order} LIMIT {limit:d}"
        )
        width = len(query.group_by)
        return [
            CostRow(
                keys=tuple(str(v) for v in row[:width]),
                requests=int(row[width]),
                input_tokens=int(row[width + 1]),
                output_tokens=int(row[width + 2]),
                cost_nanos=int(row[width + 3]),
                cached_input_tokens=int(row[width + 4]),
                reasoning_tokens=int(row[width + 5]),
            )
            for row in await self.client.select(sql, params)
        ]

    def _raw_source(self, query: CostQuery, tenant: list[str], *, whole: bool, lo: str = "", hi: str = "") -> str:
        """Deduplicated raw rows in the query's range (or in [lo, hi) when given), one row a request."""
        conditions = list(tenant)
        if whole:
            if query.since is not None:
                conditions.append("occurred_at >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')")
            if query.until is not None:
                conditions.append("occurred_at < fromUnixTimestamp64Milli({until_ms:Int64}, 'UTC')")
        else:
            conditions += [f"occurred_at >= {lo}", f"occurred_at < {hi}"]
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        cost = "cost_nanos"
        join = ""
        if query.repriced:
            # The newest repricing of an event, else the cost billed at the time.
            cost = "if(r.event_id = '', u.cost_nanos, r.cost_nanos)"
            join = (
                f" LEFT ANY JOIN (SELECT event_id, org, project, cost_nanos FROM {self._table(REPRICES_TABLE)} FINAL)"
                " AS r ON u.org = r.org AND u.project = r.project AND u.event_id = r.event_id"
            )
        return (
            "SELECT u.org AS org, u.project AS project, u.developer AS developer, u.provider AS provider,"
            " u.model AS model, u.agent AS agent, u.run_id AS run_id, toDateTime(u.occurred_at, 'UTC') AS ts,"
            " toUInt64(1) AS requests, u.input_tokens AS input_tokens, u.output_tokens AS output_tokens,"
            f" {cost} AS cost_nanos, u.cached_input_tokens AS cached_input_tokens,"
            " u.reasoning_tokens AS reasoning_tokens"
            f" FROM (SELECT * FROM {self._table(USAGE_TABLE)} FINAL {where}) AS u{join}"
        )

    def _rollup_source(self, query: CostQuery, tenant: list[str]) -> str:
        since = "fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')"
        until = "fromUnixTimestamp64Milli({until_ms:Int64}, 'UTC')"
        # Whole hours inside [since, until) from the rollup; the ragged ends from raw rows.
        first_hour = f"toDateTime64(toStartOfHour({since}) + if(toStartOfHour({since}) < {since}, 3600, 0), 3, 'UTC')"
        last_hour = f"toDateTime64(toStartOfHour({until}), 3, 'UTC')"
        conditions = list(tenant)
        if query.since is not None:
            conditions.append(f"hour >= {first_hour}")
        if query.until is not None:
            conditions.append(f"hour < {last_hour}")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        parts = [
            "SELECT org, project, developer, provider, model, agent, '' AS run_id, hour AS ts, requests,"
            " input_tokens, output_tokens, cost_nanos, cached_input_tokens, reasoning_tokens"
            f" FROM {self._table(HOURLY_TABLE)} {where}"
        ]
        if query.since is not None:
            hi = f"least({first_hour}, {until})" if query.until is not None else first_hour
            parts.append(self._raw_source(query, tenant, whole=False, lo=since, hi=hi))
        if query.until is not None:
            lo = f"greatest({last_hour}, {since})" if query.since is not None else last_hour
            parts.append(self._raw_source(query, tenant, whole=False, lo=lo, hi=until))
        return " UNION ALL ".join(parts)

    async def usage_to_reprice(
        self, since_ms: int, after: tuple[str, str, str], page: int
    ) -> list[tuple[tuple[str, str, str], RepriceInput]]:
        """A page of stored events at or after `since_ms`, ordered by key, after key `after`."""
        await self.ensure_schema()
        sql = (
            "SELECT org, project, event_id, provider, model, input_tokens, output_tokens,"
            " cached_input_tokens, cache_write_tokens, toUnixTimestamp64Milli(occurred_at), cost_nanos"
            f" FROM {self._table(USAGE_TABLE)} FINAL"
            " WHERE occurred_at >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')"
            " AND (org, project, event_id) > ({a_org:String}, {a_project:String}, {a_event:String})"
            f" ORDER BY org, project, event_id LIMIT {page:d}"
        )
        params: QueryParams = {"since_ms": since_ms, "a_org": after[0], "a_project": after[1], "a_event": after[2]}
        return [
            (
                (str(r[0]), str(r[1]), str(r[2])),
                RepriceInput(
                    provider=str(r[3]),
                    model=str(r[4]),
                    input_tokens=int(r[5]),
                    output_tokens=int(r[6]),
                    cached_input_tokens=int(r[7]),
                    cache_write_tokens=int(r[8]),
                    occurred_at_ms=int(r[9]),
                    billed_nanos=int(r[10]),
                ),
            )
            for r in await self.client.select(sql, params)
        ]

    async def insert_reprices(self, rows: Sequence[tuple[tuple[str, str, str], int, int]], source: str) -> None:
        """Record new costs ((org, project, event_id), occurred_at_ms, cost_nanos); raw events stay as they are."""
        if not rows:
            return
        payload = _json_each_row(
            {
                "org": key[0],
                "project": key[1],
                "event_id": key[2],
                "occurred_at": format_unix(occurred_ms, 3),
                "cost_nanos": cost,
                "price_source": source,
            }
            for key, occurred_ms, cost in rows
        )
        await self.client.insert_json_rows(
            self._table(REPRICES_TABLE),
            ("org", "project", "event_id", "occurred_at", "cost_nanos", "price_source"),
            payload,
        )

    async def insert_run_calls(self, calls: Sequence[RunCall]) -> None:
        rows = (
            {
                "run_id": c.run_id,
                "trace_id": c.trace_id,
                "span_id": c.span_id,
                "org": c.org,
                "project": c.project,
                "agent": c.agent,
                "step": c.step,
                "request_id": c.request_id,
                "request_model": c.request_model,
                "response_model": c.response_model,
                "provider": c.provider,
                "request_json": c.request_json,
                "response_json": c.response_json,
                "request_digest": c.request_digest,
                "message_digests": list(c.message_digests),
                "input_tokens": c.input_tokens,
                "output_tokens": c.output_tokens,
                "cost_nanos": c.cost_nanos,
                "latency_ms": c.latency_ms,
                "status": c.status,
                "error": c.error,
                "config_version": c.config_version,
                "attempts": c.attempts,
                "start_time": format_unix(c.start_time_ns, 9),
            }
            for c in calls
        )
        await self.client.insert_json_rows(self._table(RUN_CALLS_TABLE), RUN_CALL_COLUMNS, _json_each_row(rows))

    @staticmethod
    def _tenant(org: str, project: str, params: dict[str, str | int | list[str]]) -> str:
        conditions = []
        if org:
            conditions.append("org = {org:String}")
            params["org"] = org
        if project:
            conditions.append("project = {project:String}")
            params["project"] = project
        return " AND ".join(conditions) if conditions else "1"

    async def list_runs(self, org: str, project: str, since_ns: int | None, limit: int) -> list[RunSummary]:
        """Runs with recorded calls (of one org/project when given), newest first."""
        await self.ensure_schema()
        params: dict[str, str | int | list[str]] = {}
        where = self._tenant(org, project, params)
        if since_ns is not None:
            where += " AND start_time >= fromUnixTimestamp64Nano({since:Int64}, 'UTC')"
            params["since"] = since_ns
        sql = (
            # A run may span projects (agents holding keys of several); an operator sees it once.
            "SELECT run_id, arrayStringConcat(arraySort(groupUniqArray(org)), ','),"
            " arrayStringConcat(arraySort(groupUniqArray(project)), ','),"
            " groupUniqArray(trace_id), arraySort(groupUniqArray(agent)), count(),"
            " countIf(status = 'ERROR'), sum(input_tokens), sum(output_tokens), sum(cost_nanos),"
            " toUnixTimestamp64Nano(min(start_time)),"
            " max(toUnixTimestamp64Nano(start_time) + toInt64(latency_ms * 1000000)) AS ended"
            f" FROM {self._table(RUN_CALLS_TABLE)} FINAL WHERE {where}"
            f" GROUP BY run_id ORDER BY ended DESC LIMIT {min(limit or self.max_rows, self.max_rows):d}"
        )
        return [_summary_from_row(row) for row in await self.client.select(sql, params)]

    async def get_run(self, run_id: str, org: str, project: str) -> tuple[list[RunCall], list[SpanRecord]]:
        """The run's recorded calls (of one org/project when given) and every span of their traces."""
        await self.ensure_schema()
        params: dict[str, str | int | list[str]] = {"run_id": run_id}
        where = self._tenant(org, project, params)
        sql = (
            f"SELECT {', '.join(RUN_CALL_COLUMNS[:-1])}, toUnixTimestamp64Nano(start_time)"
            f" FROM {self._table(RUN_CALLS_TABLE)} FINAL WHERE run_id = {{run_id:String}} AND {where}"
            f" ORDER BY start_time, span_id LIMIT {self.max_rows:d}"
        )
        calls = [_call_from_row(row) for row in await self.client.select(sql, params)]
        spans: list[SpanRecord] = []
        for trace_id in sorted({c.trace_id for c in calls}):
            spans.extend(await self.get_trace(trace_id))
        return calls, spans

    async def trace_has_calls_of(self, trace_id: str, org: str, project: str) -> bool:
        """Whether a recorded call or a router span of `org`/`project` belongs to the trace."""
        await self.ensure_schema()
        params: QueryParams = {"trace_id": trace_id, "org": org, "project": project}
        sql = (
            f"SELECT count() FROM {self._table(SPANS_TABLE)} WHERE trace_id = {{trace_id:String}}"
            " AND attributes['interlock.org'] = {org:String} AND attributes['interlock.project'] = {project:String}"
        )
        rows = await self.client.select(sql, params)
        return bool(rows) and int(rows[0][0]) > 0

    async def get_trace(self, trace_id: str) -> list[SpanRecord]:
        """The spans of one trace, oldest first."""
        await self.ensure_schema()
        sql = (
            "SELECT trace_id, span_id, parent_span_id, service_name, name, kind,"
            " toUnixTimestamp64Nano(start_time), toUnixTimestamp64Nano(end_time),"
            " status_code, status_message, scope_name, attributes, resource_attributes"
            f" FROM {self._table(SPANS_TABLE)} FINAL WHERE trace_id = {{trace_id:String}}"
            f" ORDER BY start_time, span_id LIMIT {self.max_rows:d}"
        )
        params: QueryParams = {"trace_id": trace_id}
        return [_span_from_row(row) for row in await self.client.select(sql, params)]

    async def close(self) -> None:
        await self.client.close()


@dataclass(frozen=True)
class RepriceInput:
    """What a stored event's cost is computed from."""

    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    occurred_at_ms: int
    billed_nanos: int
    """The cost stored with the event (as billed)."""


def _dimension_sql(dim: Dimension) -> str:
    """The dimension's value over a cost source (raw or rollup rows), as text."""
    if dim is Dimension.DAY:
        return "toString(toDate(ts))"
    if dim is Dimension.HOUR:
        return "formatDateTime(toStartOfHour(ts), '%Y-%m-%dT%H:00:00Z', 'UTC')"
    return f"toString({dim.value})"


def _summary_from_row(row: Sequence[Any]) -> RunSummary:
    return RunSummary(
        run_id=str(row[0]),
        org=str(row[1]),
        project=str(row[2]),
        trace_ids=tuple(sorted(str(t) for t in row[3])),
        agents=tuple(str(a) for a in row[4] if a),
        calls=int(row[5]),
        errors=int(row[6]),
        input_tokens=int(row[7]),
        output_tokens=int(row[8]),
        cost_nanos=int(row[9]),
        started_at_ns=int(row[10]),
        ended_at_ns=int(row[11]),
    )


def _call_from_row(row: Sequence[Any]) -> RunCall:
    return RunCall(
        run_id=str(row[0]),
        trace_id=str(row[1]),
        span_id=str(row[2]),
        org=str(row[3]),
        project=str(row[4]),
        agent=str(row[5]),
        step=str(row[6]),
        request_id=str(row[7]),
        request_model=str(row[8]),
        response_model=str(row[9]),
        provider=str(row[10]),
        request_json=str(row[11]),
        response_json=str(row[12]),
        request_digest=str(row[13]),
        message_digests=tuple(str(d) for d in row[14]),
        input_tokens=int(row[15]),
        output_tokens=int(row[16]),
        cost_nanos=int(row[17]),
        latency_ms=float(row[18]),
        status=str(row[19]),
        error=str(row[20]),
        config_version=str(row[21]),
        attempts=int(row[22]),
        start_time_ns=int(row[23]),
    )


def _span_from_row(row: Sequence[Any]) -> SpanRecord:
    return SpanRecord(
        trace_id=str(row[0]),
        span_id=str(row[1]),
        parent_span_id=str(row[2]),
        service_name=str(row[3]),
        name=str(row[4]),
        kind=str(row[5]),
        start_time_ns=int(row[6]),
        end_time_ns=int(row[7]),
        status_code=str(row[8]),
        status_message=str(row[9]),
        scope_name=str(row[10]),
        attributes={str(k): str(v) for k, v in dict(row[11]).items()},
        resource_attributes={str(k): str(v) for k, v in dict(row[12]).items()},
    )
