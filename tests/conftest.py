"""Fixtures shared by all of Interlock's tests.

Backing services
----------------
`kafka_bootstrap`, `clickhouse_url`, `redis_url` and `postgres_url` are session-scoped
addresses of a real Kafka, ClickHouse, Redis and PostgreSQL. Each comes, in order, from:

1. an external server named by INTERLOCK_TEST_KAFKA (host:port),
   INTERLOCK_TEST_CLICKHOUSE_URL (http://host:port), INTERLOCK_TEST_REDIS_URL
   (redis://host:port/db) or INTERLOCK_TEST_POSTGRES_URL (postgresql://user@host:port/db);
2. a local process started by `interlock.devservers` on a free loopback port, with
   its data under the session's tmp dir (Kafka needs java and mvn, Redis needs
   redis-server, PostgreSQL Debian's postgresql; ClickHouse comes from the chdb-core wheel).

`postgres_database` is a fresh, empty database on that server for one test.

`jaeger` is a session-scoped, started `JaegerServer` (Jaeger v2, memory storage) on
free ports: `jaeger.otlp_endpoint` takes OTLP/gRPC, `jaeger.query_url` serves the
query API. Its binary is built from the Go module into $INTERLOCK_CACHE on first use
(`python -m interlock.devservers fetch` does that ahead of the tests).

A service that cannot be had skips the test that needs it, except with CI=true,
where it fails the test: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

from interlock.devservers import (
    ClickHouseServer,
    DevServerError,
    JaegerServer,
    KafkaBroker,
    ManagedProcess,
    PostgresServer,
    RedisServer,
)

_Server = TypeVar("_Server", bound=ManagedProcess)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _unavailable(service: str, reason: str) -> NoReturn:
    message = f"{service} unavailable: {reason}"
    if _in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _serve(
    service: str,
    env_var: str,
    tmp_path_factory: pytest.TempPathFactory,
    make: Callable[[Path], _Server],
    address: Callable[[_Server], str],
) -> Iterator[str]:
    """Yield the external address from env_var, else run a local server for the session."""
    external = os.environ.get(env_var, "").strip()
    if external:
        yield external
        return
    server = make(tmp_path_factory.mktemp(service))
    failure = ""
    try:
        server.start()
    except (DevServerError, OSError) as exc:
        failure = str(exc)
    if failure:
        # Outside the except block, so the report shows the reason and no chained traceback.
        _unavailable(service, failure)
    try:
        yield address(server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers ("127.0.0.1:port") of a single-node Kafka 4 broker; topics auto-create."""
    yield from _serve("kafka", "INTERLOCK_TEST_KAFKA", tmp_path_factory, KafkaBroker, lambda s: s.bootstrap)


@pytest.fixture(scope="session")
def clickhouse_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """HTTP URL ("http://127.0.0.1:port") of a ClickHouse server; user `default`, no password."""
    yield from _serve(
        "clickhouse", "INTERLOCK_TEST_CLICKHOUSE_URL", tmp_path_factory, ClickHouseServer, lambda s: s.url
    )


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL ("redis://127.0.0.1:port/0") of a Redis server without persistence."""
    yield from _serve("redis", "INTERLOCK_TEST_REDIS_URL", tmp_path_factory, RedisServer, lambda s: s.url)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL ("postgresql://interlock@127.0.0.1:port/postgres") of a PostgreSQL server; trust auth."""

    def make(path: Path) -> PostgresServer:
        return PostgresServer(path)

    yield from _serve("postgres", "INTERLOCK_TEST_POSTGRES_URL", tmp_path_factory, make, lambda s: s.url)


@pytest.fixture(scope="session")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JaegerServer]:
    """A started Jaeger v2 all-in-one (memory storage, loopback, free ports) for the session."""
    server = JaegerServer(tmp_path_factory.mktemp("jaeger"))
    failure = ""
    try:
        server.start()
    except (DevServerError, OSError) as exc:
        failure = str(exc)
    if failure:
        _unavailable("jaeger", failure)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """URL of a new database on the `postgres_url` server, dropped after the test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # name is generated, never input
    base, _, _ = postgres_url.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
