"""The rate-limiter as deployed: limiter replicas on one Redis, router-side clients, the CLI.

These are the issue's acceptance checks: (a) exact RPM across 3 router clients and 2
limiter replicas over a 2-minute burst; (b) TPM within 2% with estimates corrected by
actual usage; (c) a dead or hung limiter: fail-closed rules refuse with a clear error,
fail-open rules admit and are counted, nothing waits past the caller's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from router_calls import chat_call as shared_chat_call

from interlock import cli
from interlock.devservers import free_port
from interlock.errors import UnavailableError
from interlock.services.ratelimit.config import RateLimitSettings
from interlock.services.ratelimit.main import serve
from interlock.services.router.adapters.mesh_clients import RateLimitClient
from interlock.services.router.adapters.prompt_tokens import estimate_prompt_tokens
from interlock.services.router.domain.chat import ChatCall
from interlock.services.router.domain.flow import Caller
from interlock.services.router.domain.provider import TokenUsage

pytestmark = pytest.mark.integration


def chat_call(prompt: str = "hello there world", max_tokens: int = 16) -> ChatCall:
    """The unit tests' call (tests/router_calls.py) with a small default max_tokens."""
    return shared_chat_call(prompt, max_tokens)


class Limiter:
    """One rate-limiter replica served in-process."""

    def __init__(self, settings: RateLimitSettings) -> None:
        self.target = f"{settings.host}:{settings.port}"
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(serve(settings, self._stop))

    async def ready(self) -> None:
        async with grpc.aio.insecure_channel(self.target) as channel:
            await asyncio.wait_for(channel.channel_ready(), 10)

    async def kill(self) -> None:
        self._stop.set()
        await self._task


@contextlib.asynccontextmanager
async def limiters(n: int, limits: Path, redis_url: str = "", reload_s: float = 1.0) -> AsyncIterator[list[Limiter]]:
    started = [
        Limiter(
            RateLimitSettings(
                port=free_port(),
                limits_path=str(limits),
                redis_url=redis_url,
                reload_interval_s=reload_s,
                overrides_refresh_s=0.2,
                grace_s=0.5,
            )
        )
        for _ in range(n)
    ]
    try:
        for limiter in started:
            await limiter.ready()
        yield started
    finally:
        for limiter in started:
            if not limiter._task.done():
                await limiter.kill()


def write_limits(path: Path, descriptors: str) -> Path:
    path.write_text("domain: interlock\ndescriptors:\n" + descriptors)
    return path


@pytest.mark.parametrize("lease_ms", [0, 1000], ids=["per-call", "leased"])
async def test_rpm_is_exact_across_three_routers_and_two_limiters_over_two_minutes(
    redis_url: str, tmp_path: Path, lease_ms: int
) -> None:
    """(a) N a minute admits between N and 1.01 N per minute, and never more in any rolling minute.

    Leased: the routers admit from rate-limit leases until half the limit is taken, then
    per call; a leased call is timed by the router's clock at admission (the same host
    clock as Redis's here), when it really went out."""
    n = 300
    project = f"burst-{uuid.uuid4().hex[:8]}"
    limits = write_limits(
        tmp_path / "limits.yaml", f"- key: project\n  rate_limit: {{unit: minute, requests_per_unit: {n}}}\n"
    )
    async with limiters(2, limits, redis_url) as (a, b):
        clients = [RateLimitClient(t, fail_open=False, lease_ms=lease_ms) for t in (a.target, b.target, a.target)]
        callers = [Caller("default", project, "dev", f"key-{i}") for i in range(3)]
        admitted: list[int] = []
        deadline = time.monotonic() + 120.0

        async def hammer(i: int) -> None:
            call = chat_call()
            while time.monotonic() < deadline:
                admission = await clients[i % 3].admit(callers[i % 3], call, 5.0)
                if admission.leased:
                    admitted.append(time.time_ns() // 1_000_000)
                    await asyncio.sleep(0)  # a leased admission does not wait: let the others run
                elif admission.allowed:
                    admitted.append(admission.decided_at_ms)
                else:
                    await asyncio.sleep(0.005)

        await asyncio.gather(*(hammer(i) for i in range(9)))
        leased = sum(c.leases.admitted for c in clients if c.leases is not None)
        for c in clients:
            await c.aclose()
    if lease_ms:
        # Leases took the first part of each minute (up to half the limit), calls the rest.
        assert n // 4 <= leased <= n, leased
    admitted.sort()
    start = admitted[0]
    # Decision times are Redis's clock, shared by both replicas: the check is exact.
    j = 0
    for i, t in enumerate(admitted):
        while admitted[j] <= t - 60_000:
            j += 1
        assert i - j + 1 <= n, f"{i - j + 1} admitted in the rolling minute ending at {t}"
    for minute in range(2):
        count = sum(1 for t in admitted if start + minute * 60_000 <= t < start + (minute + 1) * 60_000)
        assert n <= count <= n * 1.01, (minute, count)


@pytest.mark.parametrize(
    ("in_background", "lease_ms"), [(False, 0), (True, 0), (True, 1000)], ids=["awaited", "piggybacked", "leased"]
)
async def test_tpm_holds_within_two_percent_when_estimates_are_corrected(
    redis_url: str, tmp_path: Path, in_background: bool, lease_ms: int
) -> None:
    """(b) Admit on estimates (prompt by tokenizer + max output), correct by actual usage.

    Piggybacked: corrections ride on the next admission (or AdjustHits after the linger),
    as the router sends them. Leased: calls are admitted from rate-limit leases while the
    window is under half full; corrections and unspent leases go back merged."""
    limit = 100_000
    project = f"tpm-{uuid.uuid4().hex[:8]}"
    limits = write_limits(
        tmp_path / "limits.yaml",
        "- key: usage\n  value: tokens\n  descriptors:\n"
        f"  - key: project\n    rate_limit: {{unit: minute, requests_per_unit: {limit}}}\n",
    )
    rng = random.Random(7)
    consumed: list[int] = []
    async with limiters(2, limits, redis_url) as (a, b):
        clients = [
            RateLimitClient(t, fail_open=False, correct_in_background=in_background, lease_ms=lease_ms)
            for t in (a.target, b.target, a.target)
        ]
        caller = Caller("default", project, "dev", "key")

        async def one(client: RateLimitClient) -> bool:
            call = chat_call(
                " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(rng.randint(5, 200))), 800
            )
            admission = await client.admit(caller, call, 5.0)
            if not admission.allowed:
                return False
            await asyncio.sleep(rng.uniform(0.0, 0.03))  # the provider answers
            prompt = estimate_prompt_tokens(call.messages)
            # Another vendor's tokenizer may count up to 3% more prompt tokens than the estimate.
            usage = TokenUsage(int(prompt * rng.uniform(1.0, 1.03)), rng.randint(1, call.max_tokens))
            await client.record_usage(caller, call, admission, usage)
            consumed.append(usage.input_tokens + usage.output_tokens)
            return True

        async def worker(i: int, until: float) -> None:
            while time.monotonic() < until:
                if not await one(clients[i % 3]):
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(worker(i, time.monotonic() + 4.0) for i in range(12)))
        leased = sum(c.leases.admitted for c in clients if c.leases is not None)
        assert (leased > 0) == (lease_ms > 0), leased
        # The other clients send whatever corrections they still hold as they close.
        for c in clients[1:]:
            await c.aclose()
        # Then one at a time until refused, so no correction is still in flight at the end.
        while await one(clients[0]):
            pass
        await clients[0].aclose()
    total = sum(consumed)
    assert limit * 0.98 <= total <= limit * 1.02, total


async def test_dead_limiter_fails_each_rule_its_own_way_within_the_deadline(redis_url: str, tmp_path: Path) -> None:
    """(c) Fail-closed rules refuse with a clear error; fail-open ones admit and are counted."""
    strict = f"strict-{uuid.uuid4().hex[:8]}"
    limits = write_limits(
        tmp_path / "limits.yaml",
        "- key: project\n  rate_limit: {unit: minute, requests_per_unit: 1000}\n"
        f"- key: project\n  value: default/{strict}\n"
        "  rate_limit: {unit: minute, requests_per_unit: 1000, failure_mode: closed, name: strict-rpm}\n",
    )
    async with limiters(1, limits, redis_url) as (limiter,):
        client = RateLimitClient(limiter.target, fail_open=True)
        strict_caller, open_caller = Caller("default", strict, "d", "k1"), Caller("default", "lenient", "d", "k2")
        assert (await client.admit(strict_caller, chat_call(), 5.0)).allowed
        assert (await client.admit(open_caller, chat_call(), 5.0)).allowed
        await limiter.kill()

        started = time.monotonic()
        with pytest.raises(UnavailableError, match="'strict-rpm' fails closed"):
            await client.admit(strict_caller, chat_call(), 2.0)
        assert (await client.admit(open_caller, chat_call(), 2.0)).allowed
        assert time.monotonic() - started < 2.0
        assert (client.fail_open_admits, client.fail_closed_denials) == (1, 1)
        await client.aclose()
    # A router whose default is fail-closed refuses descriptors it has no rule for yet.
    closed_by_default = RateLimitClient(limiter.target, fail_open=False)
    with pytest.raises(UnavailableError, match="fails closed"):
        await closed_by_default.admit(open_caller, chat_call(), 2.0)
    await closed_by_default.aclose()


async def test_a_hung_limiter_never_holds_a_call_past_its_deadline() -> None:
    """(c) A limiter that accepts connections and never answers: the deadline still holds."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RateLimitClient(f"127.0.0.1:{port}", fail_open=True, decision_timeout_s=5.0)
    caller = Caller("default", "p", "d", "k")
    for deadline in (0.2, 0.5):
        started = time.monotonic()
        assert (await client.admit(caller, chat_call(), deadline)).allowed  # fail-open default
        assert time.monotonic() - started < deadline + 0.15
    await client.aclose()
    server.close()
    for w in held:
        w.close()


async def in_thread(fn: Callable[[], int]) -> int:
    return await asyncio.to_thread(fn)


async def test_cli_limits_set_and_show_reach_every_replica(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = f"cli-{uuid.uuid4().hex[:8]}"
    limits = write_limits(tmp_path / "limits.yaml", "- key: unused\n")
    async with limiters(2, limits, redis_url) as (a, b):
        code = await in_thread(
            lambda: cli.main(
                ["limits", "set", "--project", project, "--rpm", "2", "--tpm", "200000", "--ratelimit-target", a.target]
            )
        )
        assert code == 0
        capsys.readouterr()
        assert await in_thread(lambda: cli.main(["limits", "show", "--json", "--ratelimit-target", b.target])) == 0
        rows = [r for r in json.loads(capsys.readouterr().out) if r["descriptor"] == f"project=default/{project}"]
        assert sorted((r["kind"], r["limit"], r["unit"]) for r in rows) == [
            ("requests", 2, "minute"),
            ("tokens", 200000, "minute"),
        ]
        await asyncio.sleep(0.5)  # replica b reads overrides from Redis every 0.2 s here
        client_a, client_b = RateLimitClient(a.target, False), RateLimitClient(b.target, False)
        caller = Caller("default", project, "d", "k")
        results = [(await c.admit(caller, chat_call(), 5.0)).allowed for c in (client_a, client_b, client_a, client_b)]
        assert results == [True, True, False, False]
        for c in (client_a, client_b):
            await c.aclose()


async def test_limits_file_hot_reloads_and_a_bad_file_keeps_the_old_rules(tmp_path: Path) -> None:
    project = f"hot-{uuid.uuid4().hex[:8]}"

    def rule(n: int) -> str:
        return f"- key: project\n  rate_limit: {{unit: minute, requests_per_unit: {n}}}\n"

    limits = write_limits(tmp_path / "limits.yaml", rule(1))
    async with limiters(1, limits, reload_s=0.1) as (limiter,):
        client = RateLimitClient(limiter.target, False)
        caller = Caller("default", project, "d", "k")

        async def admitted() -> bool:
            return (await client.admit(caller, chat_call(), 5.0)).allowed

        assert [await admitted(), await admitted()] == [True, False]
        write_limits(limits, rule(3))
        await eventually(admitted)
        limits.write_text("domain: interlock\ndescriptors: [{key: project, rate_limit: {unit: lightyear}}]\n")
        await asyncio.sleep(0.4)
        assert await admitted()  # still the 3-a-minute rules: third hit
        assert not await admitted()
        await client.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 3.0) -> None:
    until = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < until, "condition not met in time"
        await asyncio.sleep(0.05)
