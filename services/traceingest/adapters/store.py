"""Trace-ingest's tables in ClickHouse: their DDL, row encoding, and the queries it answers."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from interlock.services.traceingest.adapters.clickhouse import ClickHouseClient, ClickHouseError, QueryParams
from interlock.services.traceingest.domain import CostQuery, CostRow, SpanRecord, UsageRecord

log = logging.getLogger("interlock.traceingest.store")

USAGE_TABLE = "usage_events"
SPANS_TABLE = "spans"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Redelivered events (Kafka at-least-once, spool replays) collapse on the sorting key:
# queries read with FINAL, so one event_id is always one row. PARTITION BY the event's own
# time keeps every copy of an event in the same partition, where the collapse happens.
USAGE_DDL = """
CREATE TABLE IF NOT EXISTS {db}.usage_events
(
    event_id String,
    org LowCardinality(String),
    project String,
    developer String,
    api_key_id String,
    provider LowCardinality(String),
    model LowCardinality(String),
    input_tokens Int64,
    output_tokens Int64,
    cost_nanos Int64,
    status LowCardinality(String),
    occurred_at DateTime64(3, 'UTC'),
    trace_id String,
    run_id String,
    agent String,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (org, project, event_id)
"""

# OTLP exporters retry whole batches, so a span may arrive twice: it collapses like usage.
SPANS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.spans
(
    trace_id String,
    span_id String,
    parent_span_id String,
    service_name LowCardinality(String),
    name String,
    kind LowCardinality(String),
    start_time DateTime64(9, 'UTC'),
    end_time DateTime64(9, 'UTC'),
    status_code LowCardinality(String),
    status_message String,
    scope_name LowCardinality(String),
    attributes Map(String, String),
    resource_attributes Map(String, String),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(start_time)
ORDER BY (trace_id, span_id)
"""

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
)
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


def check_database_name(name: str) -> str:
    """`name` if it is a plain identifier (it is written into DDL), else ValueError."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"database name {name!r} must match {_IDENTIFIER.pattern}")
    return name


def format_unix(value: int, digits: int) -> str:
    """A Unix time in 10**-digits seconds as ClickHouse DateTime64 text, in UTC, exact."""
    scale = 10**digits
    seconds, fraction = divmod(max(0, value), scale)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp}.{fraction:0{digits}d}"


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
        """Create the database and tables if missing; later calls are free."""
        if self._schema_ready:
            return
        async with self._schema_lock:
            if self._schema_ready:
                return
            await self.client.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
            await self.client.command(USAGE_DDL.format(db=self.database))
            await self.client.command(SPANS_DDL.format(db=self.database))
            self._schema_ready = True

    async def start(self) -> None:
        """Create the tables now if ClickHouse is up; otherwise the first write creates them."""
        try:
            await self.ensure_schema()
        except ClickHouseError as exc:
            log.warning("clickhouse unavailable at start; will retry", extra={"fields": {"error": str(exc)}})

    async def insert_usage(self, records: Sequence[UsageRecord]) -> None:
        """Insert `records` as one INSERT; raises ClickHouseError, after which none may be assumed stored."""
        if not records:
            return
        await self.ensure_schema()
        rows = (
            {
                "event_id": r.event_id,
                "org": r.org,
                "project": r.project,
                "developer": r.developer,
                "api_key_id": r.api_key_id,
                "provider": r.provider,
                "model": r.model,
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
                "cost_nanos": r.cost_nanos,
                "status": r.status,
                "occurred_at": format_unix(r.occurred_at_ms, 3),
                "trace_id": r.trace_id,
                "run_id": r.run_id,
                "agent": r.agent,
            }
            for r in records
        )
        await self.client.insert_json_rows(self._table(USAGE_TABLE), USAGE_COLUMNS, _json_each_row(rows))

    async def insert_spans(self, spans: Sequence[SpanRecord]) -> None:
        """Insert `spans` as one INSERT; raises ClickHouseError."""
        if not spans:
            return
        await self.ensure_schema()
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
        """Sums per group, costliest first. Only allow-listed column names enter the SQL text."""
        await self.ensure_schema()
        columns = [d.column for d in query.group_by]
        conditions: list[str] = []
        params: dict[str, str | int] = {}
        if query.since is not None:
            conditions.append("occurred_at >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')")
            params["since_ms"] = int(query.since.timestamp() * 1000)
        if query.org:
            conditions.append("org = {org:String}")
            params["org"] = query.org
        if query.project:
            conditions.append("project = {project:String}")
            params["project"] = query.project
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        keys = "".join(f"toString({c}) AS key_{c}, " for c in columns)
        group = f"GROUP BY {', '.join(columns)}" if columns else ""
        order = "".join(f", key_{c}" for c in columns)
        sql = (
            f"SELECT {keys}count() AS requests, sum(input_tokens) AS total_input,"
            f" sum(output_tokens) AS total_output, sum(cost_nanos) AS total_cost"
            f" FROM {self._table(USAGE_TABLE)} FINAL {where} {group}"
            # Without GROUP BY an empty table still yields one all-zero row; HAVING drops it.
            f" HAVING requests > 0 ORDER BY total_cost DESC{order} LIMIT {self.max_rows:d}"
        )
        width = len(columns)
        return [
            CostRow(
                keys=tuple(str(v) for v in row[:width]),
                requests=int(row[width]),
                input_tokens=int(row[width + 1]),
                output_tokens=int(row[width + 2]),
                cost_nanos=int(row[width + 3]),
            )
            for row in await self.client.select(sql, params)
        ]

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
