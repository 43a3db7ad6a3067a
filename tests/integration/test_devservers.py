"""The dev servers behind the test fixtures are the real thing: Kafka, ClickHouse, Redis."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor

import clickhouse_connect
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

pytestmark = pytest.mark.integration


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


async def test_kafka_round_trip_keeps_key_and_headers(kafka_bootstrap: str) -> None:
    topic = _name("devservers")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        # The topic does not exist yet: the broker creates it on first use.
        await producer.send_and_wait(topic, b"payload", key=b"k1", headers=[("trace-id", b"abc123")])
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=_name("group"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
        await consumer.commit()
    finally:
        await consumer.stop()
    assert record.value == b"payload"
    assert record.key == b"k1"
    assert list(record.headers) == [("trace-id", b"abc123")]


def test_clickhouse_replacing_merge_tree_final(clickhouse_url: str) -> None:
    client = clickhouse_connect.get_client(dsn=clickhouse_url)
    table = _name("usage")
    client.command(
        f"CREATE TABLE {table} (id UInt64, label String, version UInt64) "
        "ENGINE = ReplacingMergeTree(version) ORDER BY id"
    )
    try:
        columns = ["id", "label", "version"]
        client.insert(table, [[1, "old", 1], [2, "only", 1]], column_names=columns)
        client.insert(table, [[1, "new", 2]], column_names=columns)
        # Two inserts are two parts: without FINAL both versions of id 1 are visible.
        assert client.query(f"SELECT count() FROM {table}").result_rows == [(3,)]
        final = client.query(f"SELECT id, label FROM {table} FINAL ORDER BY id").result_rows
        assert final == [(1, "new"), (2, "only")]
    finally:
        client.command(f"DROP TABLE {table}")


def test_clickhouse_merge_tree_and_concurrent_queries(clickhouse_url: str) -> None:
    client = clickhouse_connect.get_client(dsn=clickhouse_url)
    table = _name("events")
    client.command(f"CREATE TABLE {table} (ts DateTime, n UInt32) ENGINE = MergeTree ORDER BY ts")
    try:
        client.command(f"INSERT INTO {table} SELECT toDateTime(number), number FROM numbers(1000)")

        def total(_: int) -> int:
            # A client per thread: one clickhouse-connect client is not for parallel use.
            own = clickhouse_connect.get_client(dsn=clickhouse_url)
            value = own.query(f"SELECT sum(n), sleep(0.2) FROM {table}").result_rows[0][0]
            return int(value)

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(total, range(4))) == [499500] * 4
    finally:
        client.command(f"DROP TABLE {table}")


async def test_redis_set_get_incr(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        key = _name("devservers")
        assert await client.set(key, "v", ex=60)
        assert await client.get(key) == b"v"
        assert await client.incr(key + ":n") == 1
        assert await client.incr(key + ":n") == 2
    finally:
        await client.aclose()
