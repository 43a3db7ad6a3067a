"""Rate-limit leases: the limiter's LeaseHits, the router's lease book, and the two together.

A lease's hits are charged at once to the slot of its end; calls spend them in memory; the
unspent part goes back as a correction. What must hold: no rolling window ever counts
fewer hits than were spent in it, leases stop below the limit so the last hits are decided
per call, and once every lease is given back the counters hold exactly what was spent."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, cast

import grpc
import pytest
from router_calls import CALLER, chat_call

from interlock.errors import InvalidArgumentError
from interlock.ratelimit.v1 import ratelimit_pb2, ratelimit_pb2_grpc
from interlock.services.ratelimit.adapters.stores import MemoryWindowStore
from interlock.services.ratelimit.api.servicer import RateLimitServicer
from interlock.services.ratelimit.domain.limits import parse_limit_config
from interlock.services.router.adapters.hit_leases import HitLeaseBook, LeaseAsk
from interlock.services.router.adapters.mesh_clients import RateLimitClient, merge_corrections
from interlock.services.router.domain.provider import TokenUsage

NO_CONTEXT = cast("grpc.aio.ServicerContext[Any, Any]", None)
NOW_MS = 1_700_000_000_000
RPM = 1000
TPM = 1_000_000
CONFIG = parse_limit_config(
    [
        {
            "domain": "interlock",
            "descriptors": [
                {"key": "project", "rate_limit": {"unit": "minute", "requests_per_unit": RPM}},
                {"key": "api_key", "rate_limit": {"unit": "second", "requests_per_unit": 100_000}},
                {
                    "key": "usage",
                    "value": "tokens",
                    "descriptors": [{"key": "project", "rate_limit": {"unit": "minute", "requests_per_unit": TPM}}],
                },
            ],
        }
    ]
)


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- the lease book -----------------------------------------------------------------


def test_no_lease_no_admission_and_the_first_ask_is_sized_from_the_calls_seen() -> None:
    clock = Clock()
    book: HitLeaseBook[str] = HitLeaseBook(1000, max_requests=256, clock=clock)
    assert book.take("k", 100) is None
    ask = book.ask("k")
    # One call seen over the shortest measuring time (50 ms): 20/s, for a 1 s lease, x2.
    assert ask == LeaseAsk(40, 40 * 125, 1000)
    assert book.ask("k") is None  # one ask at a time
    book.granted("k", ask, charged_at_ms=5_000, lease_ms=1000, sent_at=clock.now)
    lease = book.take("k", 100)
    assert lease is not None and lease.charged_at_ms == 5_000
    assert (lease.requests_left, lease.tokens_left) == (39, 40 * 125 - 100)
    assert book.ask("k") is None  # plenty left, plenty of time


def test_a_call_too_big_for_the_lease_is_decided_per_call_after_the_lease_goes_back() -> None:
    clock = Clock()
    book: HitLeaseBook[str] = HitLeaseBook(1000, clock=clock)
    book.take("k", 100)
    book.granted("k", LeaseAsk(3, 250, 1000), 5_000, 1000, clock.now)
    assert book.take("k", 50) is not None
    assert book.correct("k", 5_000, -20)
    assert book.take("k", 300) is None
    # The lease goes back with the miss: the limiter decides that call knowing the unspent
    # hits and the held correction are free.
    [(_, back)] = book.retired()
    assert (back.requests_left, back.tokens_left, back.token_correction) == (2, 200, -20)
    assert not book.correct("k", 5_000, -5)  # no longer live: that correction goes on its own
    assert book.take("k", 10) is None
    assert book.missed == 3 and book.admitted == 1


def test_spent_and_ended_leases_are_retired_with_what_they_did_not_spend() -> None:
    clock = Clock()
    book: HitLeaseBook[str] = HitLeaseBook(1000, clock=clock)
    book.take("k", 10)
    book.granted("k", LeaseAsk(2, 100, 1000), 5_000, 1000, clock.now)
    book.take("k", 10)
    book.take("k", 10)  # the last request: spent, its 80 tokens go back at once
    [(key, spent)] = book.retired()
    assert key == "k" and (spent.requests_left, spent.tokens_left) == (0, 80)
    book.take("k", 10)
    book.granted("k", LeaseAsk(5, 500, 1000), 6_000, 400, clock.now)  # the limiter shortened it
    assert book.take("k", 10) is not None
    clock.now += 0.4
    assert book.take("k", 10) is None  # ended: nothing is spent after the granted length
    [(_, ended)] = book.retired()
    assert (ended.charged_at_ms, ended.requests_left, ended.tokens_left) == (6_000, 4, 490)
    assert book.retired() == []


def test_a_lease_running_low_or_late_asks_for_the_next_one_in_time() -> None:
    clock = Clock()
    book: HitLeaseBook[str] = HitLeaseBook(1000, clock=clock)
    book.take("k", 10)
    first = book.ask("k")
    assert first is not None
    book.granted("k", first, 5_000, 1000, clock.now)
    while book.take("k", 10) is not None and book.ask("k") is None:
        pass
    # It asked when half was spent, before the lease ran out.
    [live] = [lease for lease in book._keys["k"].leases]
    assert live.requests_left == first.requests // 2
    book2: HitLeaseBook[str] = HitLeaseBook(1000, clock=clock)
    book2.take("k", 10)
    ask = book2.ask("k")
    assert ask is not None
    book2.granted("k", ask, 5_000, 1000, clock.now)
    clock.now += 0.6  # past half its time
    book2.take("k", 10)
    assert book2.ask("k") is not None


def test_a_shortened_lease_is_renewed_at_half_its_granted_length() -> None:
    clock = Clock()
    book: HitLeaseBook[str] = HitLeaseBook(1000, clock=clock)
    book.take("k", 10)
    ask = book.ask("k")
    assert ask is not None
    book.granted("k", ask, 5_000, 50, clock.now)  # a per-second rule: 50 ms, not 1,000
    clock.now += 0.010
    book.take("k", 10)
    assert book.ask("k") is None  # 40 of 50 ms left
    clock.now += 0.020
    book.take("k", 10)
    assert book.ask("k") is not None  # 20 ms left: past half


def test_refusals_shrink_the_ask_then_go_quiet_for_a_lease_length() -> None:
    clock = Clock()
    book: HitLeaseBook[str] = HitLeaseBook(1000, clock=clock)
    sizes = []
    for _ in range(12):
        book.take("k", 10)
        ask = book.ask("k")
        if ask is None:
            break
        sizes.append(ask.requests)
        book.refused("k", ask)
    assert sizes[-1] == 1 and all(a > b for a, b in itertools.pairwise(sizes))
    book.take("k", 10)
    assert book.ask("k") is None  # quiet: calls are decided per call
    clock.now += 1.0
    book.take("k", 10)
    assert book.ask("k") is not None


def test_merged_corrections_sum_per_decision_and_descriptor() -> None:
    def adj(at: int, *deltas: tuple[str, int]) -> ratelimit_pb2.AdjustHitsRequest:
        return ratelimit_pb2.AdjustHitsRequest(
            domain="interlock",
            decided_at_unix_ms=at,
            adjustments=[
                ratelimit_pb2.HitAdjustment(entries=[ratelimit_pb2.Entry(key="project", value=p)], delta=d)
                for p, d in deltas
            ],
        )

    merged = merge_corrections([adj(1, ("a", -5), ("b", 2)), adj(2, ("a", 1)), adj(1, ("a", -3), ("b", -2))])
    assert [(m.decided_at_unix_ms, [(a.entries[0].value, a.delta) for a in m.adjustments]) for m in merged] == [
        (1, [("a", -8)]),
        (2, [("a", 1)]),
    ]


# --- LeaseHits on the limiter ---------------------------------------------------------


def lease_request(requests: int, tokens: int, lease_ms: int = 1000) -> ratelimit_pb2.LeaseHitsRequest:
    return ratelimit_pb2.LeaseHitsRequest(
        domain="interlock",
        descriptors=[
            ratelimit_pb2.Descriptor(entries=[ratelimit_pb2.Entry(key="project", value="p")], hits_addend=requests),
            ratelimit_pb2.Descriptor(
                entries=[
                    ratelimit_pb2.Entry(key="usage", value="tokens"),
                    ratelimit_pb2.Entry(key="project", value="p"),
                ],
                hits_addend=tokens,
            ),
        ],
        lease_ms=lease_ms,
    )


def one_call() -> ratelimit_pb2.ShouldRateLimitRequest:
    return ratelimit_pb2.ShouldRateLimitRequest(
        domain="interlock",
        descriptors=[ratelimit_pb2.Descriptor(entries=[ratelimit_pb2.Entry(key="project", value="p")], hits_addend=1)],
    )


async def test_a_lease_is_charged_at_once_at_its_end_and_stops_at_the_fill_share() -> None:
    clock_ms = [NOW_MS]
    limiter = RateLimitServicer(CONFIG, MemoryWindowStore(lambda: clock_ms[0]), lease_fill=0.5)
    granted = await limiter.LeaseHits(lease_request(400, 4000), NO_CONTEXT)
    assert granted.granted and granted.lease_ms == 1000
    assert granted.charged_at_unix_ms == NOW_MS + 1000
    assert [limit.name for limit in granted.statuses[0].matched_limits] == ["project/minute"]
    # Counted from the grant on: a per-call decision sees the 400.
    assert (await limiter.ShouldRateLimit(one_call(), NO_CONTEXT)).statuses[0].limit_remaining == RPM - 401
    # 401 + 100 would pass half of 1000: no lease; a per-call decision still fits.
    refused = await limiter.LeaseHits(lease_request(100, 10), NO_CONTEXT)
    assert not refused.granted and refused.reason == "near_limit"
    assert (await limiter.ShouldRateLimit(one_call(), NO_CONTEXT)).overall_code == ratelimit_pb2.CODE_OK
    # A window after the grant the lease still counts (its slot is its end's), and so do the
    # two per-call hits decided after it (they went to the newest slot, the lease's)...
    clock_ms[0] = NOW_MS + 60_000 + 500
    assert (await limiter.ShouldRateLimit(one_call(), NO_CONTEXT)).statuses[0].limit_remaining == RPM - 400 - 2 - 1
    # ...and a window after its end it has left.
    clock_ms[0] = NOW_MS + 1000 + 60_000 + 60
    assert (await limiter.ShouldRateLimit(one_call(), NO_CONTEXT)).statuses[0].limit_remaining > RPM - 10
    assert (limiter.leases_granted, limiter.leases_refused) == (1, 1)


async def test_a_lease_is_at_most_a_twentieth_of_its_shortest_window() -> None:
    limiter = RateLimitServicer(CONFIG, MemoryWindowStore(lambda: NOW_MS), max_lease_ms=5000)
    on_key = ratelimit_pb2.LeaseHitsRequest(
        domain="interlock",
        descriptors=[ratelimit_pb2.Descriptor(entries=[ratelimit_pb2.Entry(key="api_key", value="k")], hits_addend=5)],
        lease_ms=2000,
    )
    assert (await limiter.LeaseHits(on_key, NO_CONTEXT)).lease_ms == 50  # a per-second limit
    assert (await limiter.LeaseHits(lease_request(1, 1, lease_ms=60_000), NO_CONTEXT)).lease_ms == 3000


async def test_a_lease_passing_a_shadow_rule_is_reported_and_still_granted() -> None:
    config = parse_limit_config(
        [
            {
                "domain": "interlock",
                "descriptors": [
                    {"key": "project", "rate_limit": {"unit": "minute", "requests_per_unit": 10, "shadow_mode": True}}
                ],
            }
        ]
    )
    limiter = RateLimitServicer(config, MemoryWindowStore(lambda: NOW_MS))
    assert (await limiter.LeaseHits(lease_request(5, 5), NO_CONTEXT)).granted
    assert limiter.shadow_over_limit_total == 0
    assert (await limiter.LeaseHits(lease_request(8, 5), NO_CONTEXT)).granted  # 13 of 10: shadow only
    assert limiter.shadow_over_limit_total == 1


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.ClearField("domain"), "domain"),
        (lambda r: r.ClearField("descriptors"), "descriptors"),
        (lambda r: r.ClearField("lease_ms"), "lease_ms"),
    ],
)
async def test_a_bad_lease_request_is_refused_with_its_field_and_takes_nothing(mutate: Any, field: str) -> None:
    limiter = RateLimitServicer(CONFIG, MemoryWindowStore(lambda: NOW_MS))
    request = lease_request(10, 10)
    mutate(request)
    with pytest.raises(InvalidArgumentError) as err:
        await limiter.LeaseHits(request, NO_CONTEXT)
    assert err.value.field == field
    assert (await limiter.ShouldRateLimit(one_call(), NO_CONTEXT)).statuses[0].limit_remaining == RPM - 1


# --- the router's client with leases, against the real servicer over gRPC --------------


class CountingLimiter(RateLimitServicer):
    def __init__(self, store: MemoryWindowStore) -> None:
        config = parse_limit_config(
            [
                {
                    "domain": "interlock",
                    "descriptors": [
                        {"key": "project", "rate_limit": {"unit": "minute", "requests_per_unit": RPM}},
                        {
                            "key": "usage",
                            "value": "tokens",
                            "descriptors": [
                                {"key": "project", "rate_limit": {"unit": "minute", "requests_per_unit": TPM}}
                            ],
                        },
                    ],
                }
            ]
        )
        super().__init__(config, store)
        self.per_call = 0
        self.lease_calls = 0
        self.adjust_calls = 0

    async def ShouldRateLimit(self, request: Any, context: Any) -> ratelimit_pb2.ShouldRateLimitResponse:
        self.per_call += 1
        return await super().ShouldRateLimit(request, context)

    async def AdjustHits(self, request: Any, context: Any) -> ratelimit_pb2.AdjustHitsResponse:
        self.adjust_calls += 1
        return await super().AdjustHits(request, context)

    async def LeaseHits(self, request: Any, context: Any) -> ratelimit_pb2.LeaseHitsResponse:
        self.lease_calls += 1
        return await super().LeaseHits(request, context)


async def _used(store: MemoryWindowStore, entries: str) -> int:
    return sum(w.total for key, w in store._windows.items() if entries in key)


async def test_calls_are_admitted_from_leases_and_the_counters_end_exact() -> None:
    store = MemoryWindowStore()
    limiter = CountingLimiter(store)
    server = grpc.aio.server()
    ratelimit_pb2_grpc.add_RateLimitServiceServicer_to_server(limiter, server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = RateLimitClient(f"127.0.0.1:{port}", fail_open=False, correct_in_background=True, lease_ms=1000)
    admissions = []
    try:
        for _ in range(200):
            admission = await client.admit(CALLER, chat_call(), 5.0)
            assert admission.allowed
            admissions.append(admission)
            await client.record_usage(CALLER, chat_call(), admission, TokenUsage(20, 10))
            await asyncio.sleep(0.002)
        leased = sum(a.leased for a in admissions)
        # The first call, and any that came while a lease was on its way, went per call.
        assert leased >= 150 and limiter.per_call == 200 - leased
        assert limiter.lease_calls < 20
        # The corrections of leased calls go back with their lease's unspent tokens: a
        # handful of AdjustHits, not one per call.
        assert limiter.adjust_calls < 20
        assert client.leases is not None and client.leases.admitted == leased
    finally:
        await client.aclose()
        await server.stop(None)
    # Every lease given back and every estimate corrected: exactly the 200 calls and their
    # 30 tokens each remain counted.
    assert await _used(store, "project=default/search|MINUTE") == 200 + 200 * 30
    requests_only = sum(w.total for key, w in store._windows.items() if key.startswith("interlock|project="))
    assert requests_only == 200
