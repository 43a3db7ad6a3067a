"""ClickHouse access behind one small interface, with two adapters.

`HttpClickHouse` talks to any ClickHouse server over HTTP with clickhouse-connect;
`EmbeddedClickHouse` runs the same engine in-process with chdb (the embedded default).
Both take rows as JSONEachRow bytes or as typed columns, and return rows as JSONCompact,
so the SQL lives once, in the store, and behaves the same on either engine. Typed columns
are how the hot path (usage events) inserts: over HTTP they travel in ClickHouse's Native
format, which costs the client about a fifth of the CPU of JSON and the server less too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

log = logging.getLogger("interlock.traceingest.clickhouse")

T = TypeVar("T")
QueryParams = Mapping[str, str | int | list[str]]
"""Query parameters; a list binds to an Array(String) placeholder."""
Column = tuple[str, str]
"""A column to insert: (name, ClickHouse type), e.g. ("occurred_at", "DateTime64(3, 'UTC')")."""


class ClickHouseError(Exception):
    """A ClickHouse call failed (server down, bad response, engine error)."""


class ClickHouseClient(Protocol):
    """What the store needs from a ClickHouse engine. Every failure is a ClickHouseError."""

    async def command(self, sql: str) -> None:
        """Run a statement that returns nothing (DDL)."""

    async def insert_json_rows(
        self, table: str, columns: Sequence[str], payload: bytes, settings: QueryParams | None = None
    ) -> None:
        """Insert JSONEachRow `payload` into `table` (a qualified name) as one INSERT, with query `settings`."""

    async def insert_columns(
        self, table: str, columns: Sequence[Column], data: Sequence[Sequence[Any]], settings: QueryParams | None = None
    ) -> None:
        """Insert column-oriented `data` (one sequence per column of `columns`, all the same
        length) into `table` as one INSERT. DateTime64(p) columns take integer ticks of 10**-p s."""

    async def select(self, sql: str, params: QueryParams) -> list[list[Any]]:
        """Run a query with `{name:Type}` placeholders bound server-side; rows as JSON values."""

    async def close(self) -> None:
        """Release the connection or engine."""


def format_unix(value: int, digits: int) -> str:
    """A Unix time in 10**-digits seconds as ClickHouse DateTime64 text, in UTC, exact."""
    scale = 10**digits
    seconds, fraction = divmod(max(0, value), scale)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp}.{fraction:0{digits}d}"


def _datetime64_digits(type_name: str) -> int | None:
    """p of a `DateTime64(p[, tz])` type name, else None."""
    if not type_name.startswith("DateTime64("):
        return None
    return int(type_name[len("DateTime64(") :].split(",")[0].split(")")[0])


def columns_as_json_rows(columns: Sequence[Column], data: Sequence[Sequence[Any]]) -> bytes:
    """Typed columns as JSONEachRow bytes (DateTime64 ticks as text), for engines without Native input."""
    names = [name for name, _ in columns]
    encoded: list[Sequence[Any]] = []
    for (_, type_name), values in zip(columns, data, strict=True):
        digits = _datetime64_digits(type_name)
        encoded.append(values if digits is None else [format_unix(v, digits) for v in values])
    return b"".join(
        json.dumps(dict(zip(names, row, strict=True)), ensure_ascii=False).encode() + b"\n"
        for row in zip(*encoded, strict=True)
    )


def _rows_from_json_compact(raw: bytes | str) -> list[list[Any]]:
    if not raw:
        return []
    data = json.loads(raw)["data"]
    assert isinstance(data, list)
    return data


def array_literal(values: list[str]) -> str:
    """A ClickHouse Array(String) literal, as chdb takes an array parameter."""
    quoted = ("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values)
    return "[" + ",".join(quoted) + "]"


def _settings_clause(settings: QueryParams) -> str:
    """` SETTINGS a=1, b='x'` for an INSERT's text; setting names are identifiers, values quoted."""
    if not settings:
        return ""
    parts = []
    for name, value in settings.items():
        if not name.isidentifier():
            raise ValueError(f"setting name {name!r} is not an identifier")
        if isinstance(value, int):
            parts.append(f"{name}={value:d}")
        elif isinstance(value, list):
            raise ValueError(f"setting {name!r} cannot be a list")
        else:
            parts.append(f"{name}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'")
    return " SETTINGS " + ", ".join(parts)


class HttpClickHouse:
    """A ClickHouse server over HTTP (`http://user:password@host:8123`).

    Calls run on a small thread pool with one clickhouse-connect client per thread: one
    client is not meant for parallel calls, and a slow insert must not hold up queries.
    """

    def __init__(
        self,
        url: str,
        *,
        workers: int = 4,
        connect_timeout_s: float = 5.0,
        send_receive_timeout_s: float = 30.0,
    ) -> None:
        self._url = url
        self._timeouts = (connect_timeout_s, send_receive_timeout_s)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="interlock-clickhouse")
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        parts = urlsplit(url)
        # Logged instead of the URL, which may carry a password.
        self.address = f"{parts.hostname}:{parts.port or 8123}"

    def _get_client(self) -> Any:
        # Connects lazily: the server may be down at start and come up later.
        client = getattr(self._local, "client", None)
        if client is None:
            import clickhouse_connect

            client = clickhouse_connect.get_client(
                dsn=self._url,
                connect_timeout=self._timeouts[0],
                send_receive_timeout=self._timeouts[1],
                autogenerate_session_id=False,
            )
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    async def _call(self, what: str, work: Callable[[Any], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: work(self._get_client()))
        except Exception as exc:  # every driver failure is one error type to callers
            raise ClickHouseError(f"clickhouse {self.address} {what} failed: {exc}") from exc

    async def command(self, sql: str) -> None:
        await self._call("command", lambda client: client.command(sql))

    async def insert_json_rows(
        self, table: str, columns: Sequence[str], payload: bytes, settings: QueryParams | None = None
    ) -> None:
        await self._call(
            f"insert into {table}",
            lambda client: client.raw_insert(
                table, list(columns), insert_block=payload, settings=dict(settings or {}), fmt="JSONEachRow"
            ),
        )

    async def insert_columns(
        self, table: str, columns: Sequence[Column], data: Sequence[Sequence[Any]], settings: QueryParams | None = None
    ) -> None:
        # With the types given, the driver encodes Native blocks without asking the server first.
        await self._call(
            f"insert into {table}",
            lambda client: client.insert(
                table,
                data,
                column_names=[name for name, _ in columns],
                column_type_names=[type_name for _, type_name in columns],
                column_oriented=True,
                settings=dict(settings or {}),
            ),
        )

    async def select(self, sql: str, params: QueryParams) -> list[list[Any]]:
        raw = await self._call(
            "query", lambda client: client.raw_query(sql, parameters=dict(params), fmt="JSONCompact")
        )
        return _rows_from_json_compact(raw)

    async def close(self) -> None:
        def work() -> None:
            self._executor.shutdown(wait=True)
            with self._lock:
                clients, self._clients = self._clients, []
            for client in clients:
                client.close()

        await asyncio.to_thread(work)


class EmbeddedClickHouse:
    """The ClickHouse engine in this process (chdb), its data kept under `path`.

    chdb allows one engine path per process, so one instance per process; every call
    runs on one worker thread, which serializes access to the session.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="interlock-chdb")
        self._session: Any = None
        self._closed = False

    def _get_session(self) -> Any:
        if self._session is None:
            from chdb.session import Session

            self.path.mkdir(parents=True, exist_ok=True)
            self._session = Session(str(self.path.resolve()))  # type: ignore[no-untyped-call]
        return self._session

    async def _call(self, what: str, work: Callable[[Any], T]) -> T:
        if self._closed:
            raise ClickHouseError(f"chdb {self.path} is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: work(self._get_session()))
        except Exception as exc:  # every engine failure is one error type to callers
            raise ClickHouseError(f"chdb {self.path} {what} failed: {exc}") from exc

    async def command(self, sql: str) -> None:
        await self._call("command", lambda session: session.query(sql, "TabSeparated"))

    async def insert_json_rows(
        self, table: str, columns: Sequence[str], payload: bytes, settings: QueryParams | None = None
    ) -> None:
        clause = _settings_clause(settings or {})

        def work(session: Any) -> None:
            inserter = session.send_insert(f"INSERT INTO {table} ({', '.join(columns)}){clause}", "JSONEachRow")
            with inserter:
                inserter.append(payload)
                inserter.finish()

        await self._call(f"insert into {table}", work)

    async def insert_columns(
        self, table: str, columns: Sequence[Column], data: Sequence[Sequence[Any]], settings: QueryParams | None = None
    ) -> None:
        await self.insert_json_rows(table, [name for name, _ in columns], columns_as_json_rows(columns, data), settings)

    async def select(self, sql: str, params: QueryParams) -> list[list[Any]]:
        def work(session: Any) -> bytes:
            text_params = {k: array_literal(v) if isinstance(v, list) else v for k, v in params.items()}
            result = session.query(sql, "JSONCompact", params=text_params)
            return bytes(result.bytes())

        return _rows_from_json_compact(await self._call("query", work))

    async def close(self) -> None:
        if self._closed:
            return

        def work() -> None:
            if self._session is not None:
                self._session.close()
                self._session = None

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, work)
        self._closed = True
        self._executor.shutdown(wait=True)
