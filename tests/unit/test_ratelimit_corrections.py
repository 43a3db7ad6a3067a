"""Token corrections ride on the next admission: the limiter applies a ShouldRateLimit
request's `corrections` before deciding (checked whole first), and the router's client
queues its corrections for the next admission, sending by AdjustHits only those no
admission picked up within the linger, and whatever is left at close."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import grpc
import pytest
from polling import wait_until
from router_calls import CALLER, chat_call

from interlock.errors import InvalidArgumentError
from interlock.ratelimit.v1 import ratelimit_pb2, ratelimit_pb2_grpc
from interlock.services.ratelimit.adapters.stores import MemoryWindowStore
from interlock.services.ratelimit.api.servicer import RateLimitServicer
from interlock.services.ratelimit.domain.limits import parse_limit_config
from interlock.services.router.adapters.mesh_clients import RateLimitClient
from interlock.services.router.domain.provider import TokenUsage

TOKENS_PER_MINUTE = 1000
CONFIG = parse_limit_config(
    [
        {
            "domain": domain,
            "descriptors": [
                {
                    "key": "usage",
                    "value": "tokens",
                    "descriptors": [
                        {"key": "project", "rate_limit": {"unit": "minute", "requests_per_unit": TOKENS_PER_MINUTE}}
                    ],
                }
            ],
        }
        for domain in ("interlock", "other")
    ]
)
NO_CONTEXT = cast("grpc.aio.ServicerContext[Any, Any]", None)
"""The servicer never looks at its context."""
NOW_MS = 1_700_000_000_000


def tokens(project: str = "default/search") -> list[ratelimit_pb2.Entry]:
    return [ratelimit_pb2.Entry(key="usage", value="tokens"), ratelimit_pb2.Entry(key="project", value=project)]


def ask(
    hits: int, *corrections: ratelimit_pb2.AdjustHitsRequest, domain: str = "interlock"
) -> ratelimit_pb2.ShouldRateLimitRequest:
    return ratelimit_pb2.ShouldRateLimitRequest(
        domain=domain,
        descriptors=[ratelimit_pb2.Descriptor(entries=tokens(), hits_addend=hits)],
        corrections=corrections,
    )


def correction(decided_at_ms: int, delta: int, domain: str = "interlock") -> ratelimit_pb2.AdjustHitsRequest:
    return ratelimit_pb2.AdjustHitsRequest(
        domain=domain,
        decided_at_unix_ms=decided_at_ms,
        adjustments=[ratelimit_pb2.HitAdjustment(entries=tokens(), delta=delta)],
    )


def servicer() -> RateLimitServicer:
    return RateLimitServicer(CONFIG, MemoryWindowStore(lambda: NOW_MS))


async def test_a_piggybacked_correction_frees_room_for_the_same_decision() -> None:
    limiter = servicer()
    first = await limiter.ShouldRateLimit(ask(800), NO_CONTEXT)
    assert first.overall_code == ratelimit_pb2.CODE_OK
    # 800 + 500 is over the 1000: refused, and nothing taken.
    refused = await limiter.ShouldRateLimit(ask(500), NO_CONTEXT)
    assert refused.overall_code == ratelimit_pb2.CODE_OVER_LIMIT
    # The first call used 100 tokens: its -700 is applied before this decision is made.
    admitted = await limiter.ShouldRateLimit(ask(500, correction(first.decided_at_unix_ms, -700)), NO_CONTEXT)
    assert admitted.overall_code == ratelimit_pb2.CODE_OK
    assert admitted.statuses[0].limit_remaining == TOKENS_PER_MINUTE - 100 - 500


async def test_a_correction_applies_in_its_own_domain() -> None:
    limiter = servicer()
    other = await limiter.ShouldRateLimit(ask(900, domain="other"), NO_CONTEXT)
    assert (await limiter.ShouldRateLimit(ask(900, domain="other"), NO_CONTEXT)).overall_code == (
        ratelimit_pb2.CODE_OVER_LIMIT
    )
    carrier = ask(10, correction(other.decided_at_unix_ms, -800, domain="other"))
    assert (await limiter.ShouldRateLimit(carrier, NO_CONTEXT)).statuses[0].limit_remaining == 990
    again = await limiter.ShouldRateLimit(ask(900, domain="other"), NO_CONTEXT)
    assert again.overall_code == ratelimit_pb2.CODE_OK
    assert again.statuses[0].limit_remaining == 0


def _without_entries(c: ratelimit_pb2.AdjustHitsRequest) -> ratelimit_pb2.AdjustHitsRequest:
    c.adjustments.add(delta=-1)
    return c


def _empty_key(c: ratelimit_pb2.AdjustHitsRequest) -> ratelimit_pb2.AdjustHitsRequest:
    c.adjustments[0].entries[0].key = ""
    return c


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (lambda at: correction(0, -700), "corrections[0].decided_at_unix_ms"),
        (lambda at: correction(at, -700, domain=""), "corrections[0].domain"),
        (lambda at: _without_entries(correction(at, -700)), "corrections[0].adjustments[1].entries"),
        (lambda at: _empty_key(correction(at, -700)), "corrections[0].adjustments[0].entries[0].key"),
    ],
)
async def test_an_invalid_correction_is_named_and_nothing_is_applied_or_charged(
    bad: Callable[[int], ratelimit_pb2.AdjustHitsRequest], field: str
) -> None:
    limiter = servicer()
    first = await limiter.ShouldRateLimit(ask(800), NO_CONTEXT)
    at = first.decided_at_unix_ms
    # A good correction next to the bad one (after it, too) must not be applied either.
    with pytest.raises(InvalidArgumentError) as exc_info:
        await limiter.ShouldRateLimit(ask(150, bad(at), correction(at, -700)), NO_CONTEXT)
    assert exc_info.value.field == field
    with pytest.raises(InvalidArgumentError) as second:
        await limiter.ShouldRateLimit(ask(150, correction(at, -700), bad(at)), NO_CONTEXT)
    assert second.value.field == field.replace("corrections[0]", "corrections[1]")
    # Still exactly the first 800: neither the -700 nor the refused requests' 150s were taken.
    last = await limiter.ShouldRateLimit(ask(200), NO_CONTEXT)
    assert last.overall_code == ratelimit_pb2.CODE_OK
    assert last.statuses[0].limit_remaining == 0


async def test_adjust_hits_keeps_its_unprefixed_field_names() -> None:
    with pytest.raises(InvalidArgumentError) as exc_info:
        await servicer().AdjustHits(correction(0, -1), NO_CONTEXT)
    assert exc_info.value.field == "decided_at_unix_ms"


# The router's client against the servicer, served in-process over gRPC.

PROJECT_TOKENS = 4
"""Index of (`usage`, `tokens`), (`project`, ...) in RateLimitClient.descriptors."""
USAGE = TokenUsage(20, 10)


class RecordingLimiter(RateLimitServicer):
    """The real servicer on a memory store, keeping every request and decision it saw."""

    def __init__(self, unavailable_admissions: int = 0) -> None:
        super().__init__(CONFIG, MemoryWindowStore())
        self.unavailable_admissions = unavailable_admissions
        self.admissions: list[ratelimit_pb2.ShouldRateLimitRequest] = []
        self.decisions: list[ratelimit_pb2.ShouldRateLimitResponse] = []
        self.adjusted: list[ratelimit_pb2.AdjustHitsRequest] = []

    async def ShouldRateLimit(
        self, request: ratelimit_pb2.ShouldRateLimitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ratelimit_pb2.ShouldRateLimitResponse:
        self.admissions.append(request)
        if self.unavailable_admissions:
            self.unavailable_admissions -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not now")
        response = await super().ShouldRateLimit(request, context)
        self.decisions.append(response)
        return response

    async def AdjustHits(
        self, request: ratelimit_pb2.AdjustHitsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ratelimit_pb2.AdjustHitsResponse:
        self.adjusted.append(request)
        return await super().AdjustHits(request, context)


async def _serve(limiter: RecordingLimiter) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    ratelimit_pb2_grpc.add_RateLimitServiceServicer_to_server(limiter, server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_the_next_admission_carries_the_correction_and_no_adjust_hits_is_made() -> None:
    limiter = RecordingLimiter()
    server, target = await _serve(limiter)
    # A linger far past the test: only an admission can have carried the correction.
    client = RateLimitClient(target, fail_open=False, correct_in_background=True, correction_linger_s=60)
    try:
        first = await client.admit(CALLER, chat_call(), 5.0)
        assert first.allowed and first.token_estimate > 30
        await client.record_usage(CALLER, chat_call(), first, USAGE)
        assert limiter.adjusted == []
        await client.admit(CALLER, chat_call(), 5.0)
    finally:
        await client.aclose()
        await server.stop(None)
    assert [len(a.corrections) for a in limiter.admissions] == [0, 1]
    [carried] = limiter.admissions[1].corrections
    assert carried.decided_at_unix_ms == first.decided_at_ms
    assert [a.delta for a in carried.adjustments] == [30 - first.token_estimate] * 3
    # The second decision saw the first call's 30 actual tokens, not its estimate.
    remaining = limiter.decisions[1].statuses[PROJECT_TOKENS].limit_remaining
    assert remaining == TOKENS_PER_MINUTE - 30 - first.token_estimate
    assert limiter.adjusted == []  # not at close either: nothing was left


async def test_a_correction_no_admission_carried_is_sent_after_the_linger() -> None:
    limiter = RecordingLimiter()
    server, target = await _serve(limiter)
    client = RateLimitClient(target, fail_open=False, correct_in_background=True, correction_linger_s=0.01)
    try:
        first = await client.admit(CALLER, chat_call(), 5.0)
        await client.record_usage(CALLER, chat_call(), first, USAGE)
        await wait_until(lambda: len(limiter.adjusted) == 1, "the lingering correction sent by AdjustHits")
        assert len(limiter.admissions) == 1
        assert limiter.adjusted[0].decided_at_unix_ms == first.decided_at_ms
        await client.admit(CALLER, chat_call(), 5.0)
    finally:
        await client.aclose()
        await server.stop(None)
    assert len(limiter.admissions[1].corrections) == 0  # sent once, not carried again
    remaining = limiter.decisions[1].statuses[PROJECT_TOKENS].limit_remaining
    assert remaining == TOKENS_PER_MINUTE - 30 - first.token_estimate


async def test_close_sends_the_queued_corrections() -> None:
    limiter = RecordingLimiter()
    server, target = await _serve(limiter)
    client = RateLimitClient(target, fail_open=False, correct_in_background=True, correction_linger_s=60)
    try:
        admissions = [await client.admit(CALLER, chat_call(), 5.0) for _ in range(2)]
        for admission in admissions:
            await client.record_usage(CALLER, chat_call(), admission, USAGE)
        assert limiter.adjusted == []
        await client.aclose()
        # One AdjustHits per decision named, carrying the sum of that decision's corrections.
        sent = {a.decided_at_unix_ms: [x.delta for x in a.adjustments] for a in limiter.adjusted}
        assert len(sent) == len(limiter.adjusted)
        expected: dict[int, list[int]] = {}
        for admission in admissions:
            summed = expected.get(admission.decided_at_ms, [0, 0, 0])
            expected[admission.decided_at_ms] = [d + 30 - admission.token_estimate for d in summed]
        assert sent == expected
    finally:
        await server.stop(None)


async def test_a_failed_admission_puts_its_corrections_back() -> None:
    limiter = RecordingLimiter()
    server, target = await _serve(limiter)
    client = RateLimitClient(target, fail_open=True, correct_in_background=True, correction_linger_s=60)
    try:
        first = await client.admit(CALLER, chat_call(), 5.0)
        await client.record_usage(CALLER, chat_call(), first, USAGE)
        limiter.unavailable_admissions = 1
        assert (await client.admit(CALLER, chat_call(), 5.0)).allowed  # fail-open
        assert client.fail_open_admits == 1
        await client.admit(CALLER, chat_call(), 5.0)
    finally:
        await client.aclose()
        await server.stop(None)
    # The refused RPC carried it, and so did the next one, which the limiter applied.
    assert [len(a.corrections) for a in limiter.admissions] == [0, 1, 1]
    assert limiter.admissions[2].corrections[0].decided_at_unix_ms == first.decided_at_ms
    assert limiter.adjusted == []
