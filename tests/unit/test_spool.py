"""The local durable usage spool: offsets, groups, two processes on one file, crash safety."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from interlock.spool import SpoolClosedError, SpoolRecord, UsageSpool


async def test_append_returns_increasing_offsets_and_read_returns_records_in_order(tmp_path: Path) -> None:
    spool = UsageSpool(tmp_path / "spool.db")
    try:
        first = await spool.append("e1", b"one", [("traceparent", b"00-abc-01")])
        second = await spool.append("e2", b"two", [])
        assert second > first > 0
        assert await spool.read("g", 10) == [
            SpoolRecord(first, "e1", b"one", (("traceparent", b"00-abc-01"),)),
            SpoolRecord(second, "e2", b"two", ()),
        ]
    finally:
        spool.close()


async def test_append_many_stores_a_batch_in_order_after_earlier_records(tmp_path: Path) -> None:
    spool = UsageSpool(tmp_path / "spool.db")
    try:
        before = await spool.append("e0", b"zero", [])
        offsets = await spool.append_many([("e1", b"one", [("traceparent", b"00-abc-01")]), ("e2", b"two", [])])
        assert await spool.append_many([]) == []
        assert len(offsets) == 2 and before < offsets[0] < offsets[1]
        assert await spool.read("g", 10) == [
            SpoolRecord(before, "e0", b"zero", ()),
            SpoolRecord(offsets[0], "e1", b"one", (("traceparent", b"00-abc-01"),)),
            SpoolRecord(offsets[1], "e2", b"two", ()),
        ]
    finally:
        spool.close()


async def test_spool_sink_publishes_a_batch_each_under_its_own_trace(tmp_path: Path) -> None:
    from interlock.services.budget.adapters.usage_sink import OutgoingEvent, SpoolUsageSink

    sink = SpoolUsageSink(tmp_path / "spool.db", "interlock.usage.v1")
    parents = [f"00-{i:032x}-{i:016x}-01" for i in (1, 2)]
    try:
        await sink.publish_many(
            [OutgoingEvent(f"acme/p{i}", bytes([i]), {"traceparent": p}) for i, p in enumerate(parents)]
        )
    finally:
        await sink.stop()
    spool = UsageSpool(tmp_path / "spool.db")
    try:
        records = await spool.read("g", 10)
    finally:
        spool.close()
    assert [(r.key, r.value) for r in records] == [("acme/p0", b"\x00"), ("acme/p1", b"\x01")]
    for record, parent in zip(records, parents, strict=True):
        # Each record carries a traceparent in its commit's trace (trace id kept), not its neighbour's.
        traceparent = dict(record.headers)["traceparent"].decode()
        assert traceparent.split("-")[1] == parent.split("-")[1]


async def test_read_starts_after_the_groups_commit_and_respects_max_records(tmp_path: Path) -> None:
    spool = UsageSpool(tmp_path / "spool.db")
    try:
        offsets = [await spool.append(f"e{i}", bytes([i]), []) for i in range(5)]
        batch = await spool.read("g", 2)
        assert [r.offset for r in batch] == offsets[:2]
        # Nothing committed: the same records again.
        assert [r.offset for r in await spool.read("g", 2)] == offsets[:2]
        await spool.commit("g", batch[-1].offset)
        assert [r.offset for r in await spool.read("g", 10)] == offsets[2:]
        assert await spool.committed("g") == offsets[1]
        # Groups are independent.
        assert [r.offset for r in await spool.read("other", 10)] == offsets
    finally:
        spool.close()


async def test_headers_keep_binary_values_and_order(tmp_path: Path) -> None:
    spool = UsageSpool(tmp_path / "spool.db")
    try:
        headers = [("b", b"\x00\xff"), ("a", b""), ("b", b"second")]
        await spool.append("k", b"v", headers)
        (record,) = await spool.read("g", 1)
        assert list(record.headers) == headers
    finally:
        spool.close()


async def test_two_instances_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    producer, consumer = UsageSpool(path), UsageSpool(path)
    try:
        # Concurrent appends from both instances must all land with distinct offsets.
        offsets = await asyncio.gather(
            *(producer.append(f"p{i}", b"x", []) for i in range(50)),
            *(consumer.append(f"c{i}", b"y", []) for i in range(50)),
        )
        assert len(set(offsets)) == 100
        records = await consumer.read("trace-ingest", 1000)
        assert sorted(r.offset for r in records) == sorted(offsets)
        await consumer.commit("trace-ingest", max(offsets))
        assert await producer.read("trace-ingest", 10) == []
        assert await producer.committed("trace-ingest") == max(offsets)
    finally:
        producer.close()
        consumer.close()


async def test_prune_deletes_only_what_every_group_committed(tmp_path: Path) -> None:
    spool = UsageSpool(tmp_path / "spool.db")
    try:
        offsets = [await spool.append(f"e{i}", b"v", []) for i in range(4)]
        assert await spool.prune() == 0  # no group yet: nothing may go
        await spool.commit("a", offsets[2])
        await spool.commit("b", offsets[0])
        assert await spool.prune() == 1
        assert [r.offset for r in await spool.read("b", 10)] == offsets[1:]
        # Offsets keep growing after a prune: an offset is never reused.
        await spool.commit("b", offsets[3])
        await spool.commit("a", offsets[3])
        await spool.prune()
        assert await spool.append("e4", b"v", []) > offsets[3]
    finally:
        spool.close()


def test_closed_spool_refuses_calls(tmp_path: Path) -> None:
    spool = UsageSpool(tmp_path / "spool.db")
    spool.close()
    spool.close()  # idempotent
    with pytest.raises(SpoolClosedError):
        asyncio.run(spool.read("g", 1))


_CRASHING_CONSUMER = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from interlock.spool import UsageSpool

    async def main() -> None:
        spool = UsageSpool(Path(sys.argv[1]))
        for i in range(10):
            await spool.append(f"e{i}", str(i).encode(), [("traceparent", b"tp")])
        batch = await spool.read("trace-ingest", 4)
        await spool.commit("trace-ingest", batch[-1].offset)
        # Read more but die before committing them: no close, no cleanup.
        await spool.read("trace-ingest", 4)
        os._exit(17)

    asyncio.run(main())
    """
)


def test_appends_and_commits_survive_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    done = subprocess.run([sys.executable, "-c", _CRASHING_CONSUMER, str(path)], check=False, timeout=60)
    assert done.returncode == 17
    spool = UsageSpool(path)
    try:
        # Exactly the records after the last commit come again; the uncommitted read is redelivered.
        records = asyncio.run(spool.read("trace-ingest", 100))
        assert [r.key for r in records] == [f"e{i}" for i in range(4, 10)]
        assert records[0].headers == (("traceparent", b"tp"),)
    finally:
        spool.close()
