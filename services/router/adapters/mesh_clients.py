"""gRPC clients of the rate-limiter and budget services, behind the router's ports.

Fail-open or fail-closed when a dependency is down is a setting per dependency: the
rate-limiter may fail open (availability over exact limits) but the budget fails closed
by default, because budgets are hard.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from interlock._rpc_tracing import traced_call
from interlock.budget.v1 import budget_pb2, budget_pb2_grpc
from interlock.errors import AuthenticationError, InterlockError, UnavailableError, from_rpc_error
from interlock.ratelimit.v1 import ratelimit_pb2, ratelimit_pb2_grpc
from interlock.services.router.adapters.background import START_DELAY_S, start_soon
from interlock.services.router.adapters.budget_leases import CommitBatcher, CommitOutcome, LeaseBook, LeasePolicy
from interlock.services.router.adapters.hit_leases import HitLeaseBook, LeaseAsk
from interlock.services.router.adapters.prompt_tokens import estimate_prompt_tokens
from interlock.services.router.domain.chat import ChatCall, tools_token_bound
from interlock.services.router.domain.flow import Admission, Caller, Reservation
from interlock.services.router.domain.provider import TokenUsage

log = logging.getLogger("interlock.router.mesh")
RATE_LIMIT_DOMAIN = "interlock"
# Full names of the calls, for their client spans (interlock._rpc_tracing).
_RATELIMIT = "/interlock.ratelimit.v1.RateLimitService/"
_BUDGET = "/interlock.budget.v1.BudgetService/"
_CHANNEL_OPTIONS = [("grpc.keepalive_time_ms", 30_000), ("grpc.enable_retries", 1)]
# Corrections one admission carries at most; the rest wait for the next one or the flush.
_MAX_CARRIED_CORRECTIONS = 256
# After a lease request got no answer, the router decides per call for this long.
_LEASE_RETRY_S = 1.0
# The limiter does not know LeaseHits (an older version): decide per call for this long.
_LEASE_UNIMPLEMENTED_RETRY_S = 300.0


def _error(exc: grpc.RpcError, dependency: str) -> InterlockError:
    err = from_rpc_error(exc)
    if isinstance(err, UnavailableError):
        return UnavailableError(f"{dependency} is unavailable", metadata={"dependency": dependency})
    return err


def merge_corrections(requests: Sequence[ratelimit_pb2.AdjustHitsRequest]) -> list[ratelimit_pb2.AdjustHitsRequest]:
    """One request per (domain, decision), each descriptor once with its deltas summed.

    A lease's calls all name the lease's charge time, so their corrections and the lease's
    give-back travel as one; applying the sum is applying each, as the limiter adds them."""
    merged: dict[tuple[str, int], dict[tuple[tuple[str, str], ...], int]] = {}
    for r in requests:
        deltas = merged.setdefault((r.domain, r.decided_at_unix_ms), {})
        for a in r.adjustments:
            entries = tuple((e.key, e.value) for e in a.entries)
            deltas[entries] = deltas.get(entries, 0) + a.delta
    return [
        ratelimit_pb2.AdjustHitsRequest(
            domain=domain,
            decided_at_unix_ms=decided_at,
            adjustments=[
                ratelimit_pb2.HitAdjustment(entries=[ratelimit_pb2.Entry(key=k, value=v) for k, v in e], delta=d)
                for e, d in deltas.items()
                if d
            ],
        )
        for (domain, decided_at), deltas in merged.items()
        if any(deltas.values())
    ]


_LeaseKey = tuple[tuple[tuple[str, str], ...], ...]
"""A call's descriptor set: the calls of one key, project and model share their leases."""


@functools.lru_cache(maxsize=4096)
def _descriptors(api_key_id: str, org: str, project: str, provider: str, model: str) -> _LeaseKey:
    """The rate-limit scopes of a caller's calls to a model: requests per key, project and
    model, then tokens per each (the `usage` descriptors)."""
    scopes = (
        (("api_key", api_key_id),),
        (("project", f"{org}/{project}"),),
        (("provider", provider), ("model", model)),
    )
    return scopes + tuple((("usage", "tokens"), *scope) for scope in scopes)


def _is_tokens(entries: tuple[tuple[str, str], ...]) -> bool:
    return entries[0] == ("usage", "tokens")


@dataclass(frozen=True, slots=True)
class _PendingCorrection:
    request: ratelimit_pb2.AdjustHitsRequest
    delta: int
    queued_at: float
    """time.monotonic() when record_usage queued it; the linger counts from here."""
    context: contextvars.Context
    """record_usage's context: a flushed AdjustHits is traced under its own call."""


class RateLimitClient:
    """Admission by the rate-limiter: requests (hits 1) and tokens (an estimate, corrected later).

    Descriptors: `api_key`, `project` (org/project) and `provider`+`model`, each once for
    requests and once prefixed with (`usage`, `tokens`) for tokens, so the limits file can
    set RPM and TPM rules on the same scope. When the rate-limiter cannot be reached within
    the decision timeout, each descriptor's rules decide (their failure_mode, learned from
    earlier responses); a descriptor never seen yet takes `fail_open`.

    With `correct_in_background`, a token correction costs no RPC of its own in the common
    case: it waits in a queue and rides on the next admission (ShouldRateLimitRequest's
    `corrections`), which the limiter applies before deciding. Only a correction that no
    admission picked up within `correction_linger_s` is sent by AdjustHits.

    With `lease_ms`, calls are admitted from rate-limit leases (adapters/hit_leases.py): a
    block of hits per descriptor set, asked for in the background before the current one
    runs out, so most calls make no round trip to the limiter. A call no lease can take is
    decided per call, exactly as without leases.
    """

    def __init__(
        self,
        target: str,
        fail_open: bool,
        decision_timeout_s: float = 0.5,
        *,
        correct_in_background: bool = False,
        correction_linger_s: float = 0.05,
        lease_ms: int = 0,
        lease_max_requests: int = 256,
    ) -> None:
        self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._stub = ratelimit_pb2_grpc.RateLimitServiceStub(self._channel)
        self._fail_open = fail_open
        self._decision_timeout = decision_timeout_s
        # The router answers its caller without waiting for the token correction: a round
        # trip saved per call. Limits see the correction with the next admission (or the
        # flush after the linger); until then they count the admission estimate, as they
        # already did for the whole provider call.
        self._correct_in_background = correct_in_background
        self._correction_linger = correction_linger_s
        self._pending: deque[_PendingCorrection] = deque()
        self._flush_task: asyncio.Task[None] | None = None
        self._corrections: set[asyncio.Task[None]] = set()
        # Descriptor -> name of a fail-closed rule on it ("" when all its rules fail open).
        self._closed_rules: OrderedDict[tuple[tuple[str, str], ...], str] = OrderedDict()
        self.fail_open_admits = 0
        """Calls admitted without a decision because the rate-limiter was unreachable."""
        self.fail_closed_denials = 0
        """Calls refused because the rate-limiter was unreachable and a rule fails closed."""
        self.leases: HitLeaseBook[_LeaseKey] | None = (
            HitLeaseBook(lease_ms, lease_max_requests) if lease_ms > 0 else None
        )
        self._lease_tasks: set[asyncio.Task[None]] = set()
        self._sweep: asyncio.TimerHandle | None = None

    @staticmethod
    def descriptors(caller: Caller, call: ChatCall) -> _LeaseKey:
        """The call's rate-limit scopes (also its key in the lease book), built once per caller and model."""
        return _descriptors(caller.api_key_id, caller.org, caller.project, call.route.provider, call.route.name)

    async def admit(self, caller: Caller, call: ChatCall, timeout_s: float | None) -> Admission:
        """The call's admission: from a lease in memory when one has room, else the limiter's."""
        admission = self.admit_now(caller, call)
        if admission is not None:
            return admission
        return await self.admit_remote(caller, call, timeout_s)

    def admit_now(self, caller: Caller, call: ChatCall) -> Admission | None:
        """An admission from a lease in memory, without waiting; None when only the
        rate-limiter can decide (then `admit_remote`). Asks for the next lease as needed."""
        if self.leases is None:
            return None
        tokens = self._tokens(call)
        scopes = self.descriptors(caller, call)
        key = scopes
        lease = self.leases.take(key, tokens)
        self._give_back()
        ask = self.leases.ask(key)
        if ask is not None:
            # Work for the calls to come. While the lease still had room for this call, the
            # ask lets this call go first (background.START_DELAY_S); a call the lease could
            # not admit asks the limiter itself, and the ask goes with it.
            start_soon(
                self._ask_lease(key, scopes, ask), self._lease_tasks, START_DELAY_S if lease is not None else 0.0
            )
        if lease is None:
            return None
        return Admission(True, decided_at_ms=lease.charged_at_ms, token_estimate=tokens, leased=True)

    @staticmethod
    def _tokens(call: ChatCall) -> int:
        return estimate_prompt_tokens(call.messages) + tools_token_bound(call.tools) + call.max_tokens

    async def admit_remote(self, caller: Caller, call: ChatCall, timeout_s: float | None) -> Admission:
        """The rate-limiter's decision for the call (after `admit_now` found no lease room)."""
        tokens = self._tokens(call)
        scopes = self.descriptors(caller, call)
        carried = self._carry()
        request = ratelimit_pb2.ShouldRateLimitRequest(
            domain=RATE_LIMIT_DOMAIN,
            descriptors=self._descriptors_pb(scopes, 1, tokens),
            corrections=merge_corrections([c.request for c in carried]),
        )
        # Never wait past the caller's deadline, nor longer than a decision may take.
        timeout = min(timeout_s, self._decision_timeout) if timeout_s else self._decision_timeout
        try:
            response = await traced_call(
                self._stub.ShouldRateLimit, f"{_RATELIMIT}ShouldRateLimit", request, timeout=max(timeout, 0.001)
            )
        except asyncio.CancelledError:
            self._lost(carried, "CANCELLED")
            raise
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                self._requeue(carried)
            else:
                self._lost(carried, str(exc.code()))
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise _error(exc, "rate-limiter") from None
            return self._unreachable(scopes)
        self._learn_failure_modes(scopes, response.statuses)
        if response.overall_code != ratelimit_pb2.CODE_OVER_LIMIT:
            return Admission(True, decided_at_ms=response.decided_at_unix_ms, token_estimate=tokens)
        over = [s for s in response.statuses if s.code == ratelimit_pb2.CODE_OVER_LIMIT]
        worst = max(over, key=lambda s: s.duration_until_reset_ms)
        return Admission(False, worst.current_limit.name, worst.duration_until_reset_ms / 1000)

    def _carry(self) -> list[_PendingCorrection]:
        return [self._pending.popleft() for _ in range(min(len(self._pending), _MAX_CARRIED_CORRECTIONS))]

    @staticmethod
    def _descriptors_pb(scopes: _LeaseKey, requests: int, tokens: int) -> list[ratelimit_pb2.Descriptor]:
        return [
            ratelimit_pb2.Descriptor(
                entries=[ratelimit_pb2.Entry(key=k, value=v) for k, v in entries],
                hits_addend=tokens if _is_tokens(entries) else requests,
            )
            for entries in scopes
        ]

    def _learn_failure_modes(self, scopes: _LeaseKey, statuses: Sequence[ratelimit_pb2.DescriptorStatus]) -> None:
        for entries, status in zip(scopes, statuses, strict=False):
            closed = next(
                (r.name for r in status.matched_limits if r.failure_mode == ratelimit_pb2.FAILURE_MODE_CLOSED), ""
            )
            self._closed_rules[entries] = closed
            self._closed_rules.move_to_end(entries)
        while len(self._closed_rules) > 10_000:
            self._closed_rules.popitem(last=False)

    async def _ask_lease(self, key: _LeaseKey, scopes: _LeaseKey, ask: LeaseAsk) -> None:
        """Ask for a lease in the background; no call waits for it."""
        assert self.leases is not None
        carried = self._carry()
        request = ratelimit_pb2.LeaseHitsRequest(
            domain=RATE_LIMIT_DOMAIN,
            descriptors=self._descriptors_pb(scopes, ask.requests, ask.tokens),
            lease_ms=ask.lease_ms,
            corrections=merge_corrections([c.request for c in carried]),
        )
        sent_at = time.monotonic()
        try:
            response = await traced_call(
                self._stub.LeaseHits, f"{_RATELIMIT}LeaseHits", request, timeout=self._decision_timeout
            )
        except asyncio.CancelledError:
            self._lost(carried, "CANCELLED")
            self.leases.failed(key, _LEASE_RETRY_S)
            raise
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                self._requeue(carried)
            else:
                self._lost(carried, str(code))
            unknown = code == grpc.StatusCode.UNIMPLEMENTED
            self.leases.failed(key, _LEASE_UNIMPLEMENTED_RETRY_S if unknown else _LEASE_RETRY_S)
            log.warning("rate-limit lease not granted", extra={"fields": {"code": str(code)}})
            return
        self._learn_failure_modes(scopes, response.statuses)
        if response.granted:
            self.leases.granted(key, ask, response.charged_at_unix_ms, response.lease_ms, sent_at)
            self._schedule_sweep()
        else:
            self.leases.refused(key, ask)

    def _schedule_sweep(self) -> None:
        """Give back what ended leases did not spend, soon after they end."""
        if self.leases is None or self._sweep is not None:
            return
        end = self.leases.next_end()
        if end is not None:
            self._sweep = asyncio.get_running_loop().call_later(max(0.0, end - time.monotonic()) + 0.005, self._swept)

    def _swept(self) -> None:
        self._sweep = None
        if self.leases is not None:
            self.leases.retire_ended()
            self._give_back()
            self._schedule_sweep()

    def _give_back(self) -> None:
        """Queue the unspent part of each retired lease as a correction at its charge time."""
        if self.leases is None:
            return
        retired = self.leases.retired()
        if not retired:
            return
        now = time.monotonic()
        context = contextvars.copy_context()
        for key, lease in retired:
            request = ratelimit_pb2.AdjustHitsRequest(
                domain=RATE_LIMIT_DOMAIN,
                decided_at_unix_ms=lease.charged_at_ms,
                adjustments=[
                    ratelimit_pb2.HitAdjustment(
                        entries=[ratelimit_pb2.Entry(key=k, value=v) for k, v in entries],
                        delta=lease.token_correction - lease.tokens_left
                        if _is_tokens(entries)
                        else -lease.requests_left,
                    )
                    for entries in key
                ],
            )
            self._pending.append(_PendingCorrection(request, -lease.requests_left, now, context))
        self._schedule_flush()

    def _unreachable(self, scopes: _LeaseKey) -> Admission:
        for entries in scopes:
            closed = self._closed_rules.get(entries)
            if closed is None and not self._fail_open:
                closed = "default (INTERLOCK_ROUTER_RATELIMIT_FAIL_OPEN=false)"
            if closed:
                self.fail_closed_denials += 1
                log.warning("rate-limiter unavailable; refusing (fail-closed)", extra={"fields": {"limit": closed}})
                raise UnavailableError(
                    f"rate-limiter is unavailable and limit {closed!r} fails closed",
                    metadata={"dependency": "rate-limiter", "limit": closed},
                )
        self.fail_open_admits += 1
        log.warning(
            "rate-limiter unavailable; admitting (fail-open)", extra={"fields": {"admits": self.fail_open_admits}}
        )
        return Admission(True)

    async def record_usage(self, caller: Caller, call: ChatCall, admission: Admission, usage: TokenUsage) -> None:
        """Correct the token estimate taken at admission by the tokens the provider billed.

        With `correct_in_background`, only queues the correction: the next admission
        carries it, or the flush sends it after the linger; `aclose` sends what is left."""
        pending = self.record_usage_now(caller, call, admission, usage)
        if pending is not None:
            await pending

    def record_usage_now(
        self, caller: Caller, call: ChatCall, admission: Admission, usage: TokenUsage
    ) -> Coroutine[Any, Any, None] | None:
        """`record_usage` without waiting: None when the correction needed none (nothing to
        correct, it goes back with a lease, or it is queued); else the send to await."""
        correction = self._correction(caller, call, admission, usage)
        return self._adjust(*correction) if correction is not None else None

    def _correction(
        self, caller: Caller, call: ChatCall, admission: Admission, usage: TokenUsage
    ) -> tuple[ratelimit_pb2.AdjustHitsRequest, int] | None:
        """The correction to send now, or None (none needed, or it was queued or leased)."""
        if not admission.decided_at_ms or not admission.token_estimate:
            return None
        delta = usage.input_tokens + usage.output_tokens - admission.token_estimate
        if delta == 0:
            return None
        if admission.leased and self.leases is not None:
            key = self.descriptors(caller, call)
            if self.leases.correct(key, admission.decided_at_ms, delta):
                return None  # goes back with the lease's unspent tokens, in one correction
        request = ratelimit_pb2.AdjustHitsRequest(
            domain=RATE_LIMIT_DOMAIN,
            decided_at_unix_ms=admission.decided_at_ms,
            adjustments=[
                ratelimit_pb2.HitAdjustment(
                    entries=[ratelimit_pb2.Entry(key=k, value=v) for k, v in entries], delta=delta
                )
                for entries in self.descriptors(caller, call)
                if _is_tokens(entries)
            ],
        )
        if self._correct_in_background:
            self._pending.append(_PendingCorrection(request, delta, time.monotonic(), contextvars.copy_context()))
            self._schedule_flush()
            return None
        return request, delta

    def _requeue(self, carried: list[_PendingCorrection]) -> None:
        """Put back, first in line, the corrections of an admission the limiter never got
        (UNAVAILABLE): the flush or the next admission sends them again."""
        if carried:
            self._pending.extendleft(reversed(carried))
            self._schedule_flush()

    @staticmethod
    def _lost(carried: list[_PendingCorrection], code: str) -> None:
        """Corrections of an admission that may or may not have reached the limiter (timed
        out, cancelled): not sent again, since applying one twice would give tokens back
        twice. Their estimates stay counted, erring on the side of the limit."""
        if carried:
            log.warning(
                "token corrections dropped with a failed admission",
                extra={"fields": {"code": code, "corrections": len(carried)}},
            )

    def _schedule_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_lingering())

    async def _flush_lingering(self) -> None:
        """Send by AdjustHits each correction no admission carried within the linger.

        One task, sleeping until the oldest queued correction is due. It never holds a
        correction across an await, so `aclose` may cancel it at any time."""
        while self._pending:
            now = time.monotonic()
            wait = self._pending[0].queued_at + self._correction_linger - now
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            due = []
            while self._pending and self._pending[0].queued_at + self._correction_linger <= now:
                due.append(self._pending.popleft())
            self._send_in_background(due)

    def _send_in_background(self, corrections: list[_PendingCorrection]) -> None:
        """AdjustHits for the corrections, merged: one call per decision they name."""
        if not corrections:
            return
        context = corrections[0].context
        for request in merge_corrections([c.request for c in corrections]):
            delta = sum(a.delta for a in request.adjustments)
            task = asyncio.create_task(self._adjust(request, delta), context=context)
            self._corrections.add(task)
            task.add_done_callback(self._corrections.discard)

    async def _adjust(self, request: ratelimit_pb2.AdjustHitsRequest, delta: int) -> None:
        try:
            await traced_call(self._stub.AdjustHits, f"{_RATELIMIT}AdjustHits", request, timeout=self._decision_timeout)
        except grpc.RpcError as exc:
            # The estimate stays counted: it is at least the prompt plus max output in most
            # cases, so a lost correction errs on the side of the limit.
            log.warning("token correction failed", extra={"fields": {"code": str(exc.code()), "delta": delta}})

    async def aclose(self) -> None:
        if self._lease_tasks:
            # A lease granted while closing is given back below with the others.
            await asyncio.wait(set(self._lease_tasks), timeout=self._decision_timeout * 2)
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self.leases is not None:
            self.leases.retire_all()
            self._give_back()
            book = self.leases
            log.info(
                "rate-limit leases",
                extra={
                    "fields": {
                        "admitted_from_lease": book.admitted,
                        "decided_per_call": book.missed,
                        "granted": book.leases_granted,
                        "refused": book.leases_refused,
                    }
                },
            )
        if self._flush_task is not None:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
        # No admission will carry what is still queued: send it now.
        pending = list(self._pending)
        self._pending.clear()
        self._send_in_background(pending)
        if self._corrections:
            # Each is bounded by the decision timeout; the channel must outlive them.
            await asyncio.wait(set(self._corrections), timeout=self._decision_timeout * 2)
        await self._channel.close()


_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
"""Commit failures worth retrying: the commit may not have reached the ledger (it is idempotent)."""


@dataclass(slots=True)
class _Answered:
    """A call answered, its commit not yet built: what `commit_now` keeps off the answer's path."""

    call: ChatCall
    provider: str
    usage: TokenUsage
    cost_nanos: int
    provider_attempts: int
    latency_ms: int


@dataclass(slots=True)
class _Sending:
    """A commit sent after its answer, retried (backoff from 50 ms, at most 2 s) until `deadline`."""

    request: budget_pb2.CommitRequest
    deadline: float
    delay: float = 0.05


class BudgetClient:
    """Keys, reservations and commits on the budget service; with a lease policy, most calls
    reserve against a budget lease in memory and commits travel in batches."""

    def __init__(
        self,
        target: str,
        auth_cache_ttl_s: float = 30.0,
        leases: LeasePolicy | None = None,
        *,
        commit_after_answer: bool = False,
        background_commit_s: float = 120.0,
        background_commit_linger_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock`: monotonic seconds of the key cache's TTL (a test's own clock)."""
        self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._stub = budget_pb2_grpc.BudgetServiceStub(self._channel)
        self._auth_ttl = auth_cache_ttl_s
        self._clock = clock
        # Valid keys only, bounded; a revoked key stops working within the TTL.
        self._auth_cache: OrderedDict[str, tuple[float, Caller]] = OrderedDict()
        self._auth_refreshing: set[str] = set()  # digests being checked again in the background
        self._auth_tasks: set[asyncio.Task[None]] = set()
        self.leases = LeaseBook(leases, self._lease_rpc) if leases is not None and leases.slice_nanos > 0 else None
        # Commits no caller waits for linger a little, so more of them share a round trip.
        self._commits = CommitBatcher(
            self._commit_batch_rpc, linger_s=background_commit_linger_s if commit_after_answer else 0.0
        )
        # With commit_after_answer, `commit` returns at once: the call joins `_answered`,
        # settled and queued in one callback after the answer's write, then sent (batched) and
        # retried until it lands or `background_commit_s` passes. No task per commit.
        self._commit_after_answer = commit_after_answer
        self._background_commit_s = background_commit_s
        self._answered: list[_Answered] = []
        self._unsettled = 0  # commits answered and not yet landed or given up
        self._all_settled = asyncio.Event()
        self._all_settled.set()
        self.commits_lost = 0
        """Commits given up after retrying (their reservations expire); logged as errors."""

    async def _lease_rpc(self, request: budget_pb2.LeaseRequest, timeout_s: float) -> budget_pb2.LeaseResponse:
        try:
            response: budget_pb2.LeaseResponse = await traced_call(
                self._stub.Lease, f"{_BUDGET}Lease", request, timeout=timeout_s
            )
        except grpc.RpcError as exc:
            raise _error(exc, "budget") from None
        return response

    async def _commit_batch_rpc(self, requests: list[budget_pb2.CommitRequest]) -> list[budget_pb2.CommitResponse]:
        if len(requests) == 1:
            return [await traced_call(self._stub.Commit, f"{_BUDGET}Commit", requests[0], timeout=5.0)]
        response = await traced_call(
            self._stub.CommitBatch,
            f"{_BUDGET}CommitBatch",
            budget_pb2.CommitBatchRequest(commits=requests),
            timeout=5.0,
        )
        return list(response.results)

    async def authenticate(self, api_key: str) -> Caller:
        now = self._clock()
        # Cache by digest so the process never keeps a table of plaintext keys.
        cache_key = hashlib.sha256(api_key.encode()).hexdigest()
        hit = self._auth_cache.get(cache_key)
        if hit is not None and hit[0] > now:
            if now >= hit[0] - self._auth_ttl / 3 and cache_key not in self._auth_refreshing:
                # In the last third of its life a key in use is checked again in the background,
                # so no call of a busy key waits for the check; an idle key's entry just expires.
                self._auth_refreshing.add(cache_key)
                # Work for the key's calls to come, after this one (background.START_DELAY_S).
                start_soon(self._refresh_auth(api_key, cache_key), self._auth_tasks)
            return hit[1]
        return await self._check_key(api_key, cache_key)

    async def _check_key(self, api_key: str, cache_key: str) -> Caller:
        now = self._clock()
        try:
            response = await traced_call(
                self._stub.AuthenticateApiKey,
                f"{_BUDGET}AuthenticateApiKey",
                budget_pb2.AuthenticateApiKeyRequest(api_key=api_key),
                timeout=5.0,
            )
        except grpc.RpcError as exc:
            err = _error(exc, "budget")
            if isinstance(err, AuthenticationError):
                self._auth_cache.pop(cache_key, None)  # revoked: stops working now, not at expiry
                raise AuthenticationError("API key is not valid") from None
            raise err from None
        p = response.principal
        caller = Caller(p.org, p.project, p.developer, p.api_key_id)
        self._auth_cache[cache_key] = (now + self._auth_ttl, caller)
        self._auth_cache.move_to_end(cache_key)
        while len(self._auth_cache) > 10_000:
            self._auth_cache.popitem(last=False)
        return caller

    async def _refresh_auth(self, api_key: str, cache_key: str) -> None:
        try:
            await self._check_key(api_key, cache_key)
        except InterlockError as exc:
            # Revoked keys are out of the cache already; any other failure leaves the entry to
            # expire, and the next call after that asks again (and waits).
            if not isinstance(exc, AuthenticationError):
                log.warning("API key re-check failed", extra={"fields": {"error": str(exc)}})
        finally:
            self._auth_refreshing.discard(cache_key)

    async def reserve(self, request_id: str, caller: Caller, amount_nanos: int, timeout_s: float | None) -> Reservation:
        """Hold `amount_nanos` for the call: from a budget lease in memory when it has room,
        else from the budget service."""
        reservation = self.reserve_now(request_id, caller, amount_nanos)
        if reservation is not None:
            return reservation
        return await self.reserve_remote(request_id, caller, amount_nanos, timeout_s)

    def reserve_now(self, request_id: str, caller: Caller, amount_nanos: int) -> Reservation | None:
        """A reservation from a budget lease in memory, without waiting; None when the budget
        service must decide (then `reserve_remote`)."""
        if self.leases is not None and self.leases.take(request_id, caller, amount_nanos):
            return Reservation(True)
        return None

    async def reserve_remote(
        self, request_id: str, caller: Caller, amount_nanos: int, timeout_s: float | None
    ) -> Reservation:
        """The budget service's reservation (after `reserve_now` found no lease room): the
        lease grown to fit the call when it can be, else an exact reservation."""
        if self.leases is not None:
            try:
                if await self.leases.grow_and_take(request_id, caller, amount_nanos, timeout_s or 5.0):
                    return Reservation(True)
            except InterlockError as exc:
                # A refused or failed lease change leaves the exact reservation below to decide.
                log.warning("budget lease change failed", extra={"fields": {"error": str(exc)}})
        request = budget_pb2.ReserveRequest(
            request_id=request_id,
            principal=budget_pb2.Principal(
                org=caller.org, project=caller.project, developer=caller.developer, api_key_id=caller.api_key_id
            ),
            amount_nanos=amount_nanos,
        )
        try:
            response = await traced_call(self._stub.Reserve, f"{_BUDGET}Reserve", request, timeout=timeout_s or 5.0)
        except grpc.RpcError as exc:
            raise _error(exc, "budget") from None
        reset_at = response.reset_at.ToNanoseconds() / 1e9 if response.HasField("reset_at") else 0.0
        return Reservation(
            response.granted,
            response.exceeded_scope,
            response.remaining_nanos,
            limit_nanos=response.limit_nanos,
            committed_nanos=response.committed_nanos,
            reserved_nanos=response.reserved_nanos,
            reset_at=reset_at,
            window=response.window,
        )

    async def commit(
        self, call: ChatCall, provider: str, usage: TokenUsage, cost_nanos: int, provider_attempts: int = 0
    ) -> None:
        pending = self.commit_now(call, provider, usage, cost_nanos, provider_attempts)
        if pending is not None:
            await pending

    def commit_now(
        self, call: ChatCall, provider: str, usage: TokenUsage, cost_nanos: int, provider_attempts: int = 0
    ) -> Coroutine[Any, Any, None] | None:
        """`commit` without waiting: None when the commit is sent after the answer
        (`commit_after_answer`); else the send (with retries) for the caller to await."""
        latency_ms = round((time.monotonic() - call.started_at) * 1000) if call.started_at else 0
        if self._commit_after_answer:
            # Settled and queued by a callback that runs after this step, which writes the
            # caller's answer; the calls answered in one turn of the loop share it. Until the
            # commit lands, the lease holds the call's worst case.
            self._answered.append(_Answered(call, provider, usage, cost_nanos, provider_attempts, latency_ms))
            self._unsettled += 1
            self._all_settled.clear()
            if len(self._answered) == 1:
                asyncio.get_running_loop().call_soon(self._queue_answered)
            return None
        lease_id = self.leases.settle(call.request_id, cost_nanos) if self.leases is not None else ""
        return self._commit_waited(
            self._commit_request(call, provider, usage, cost_nanos, provider_attempts, latency_ms, lease_id)
        )

    @staticmethod
    def _commit_request(
        call: ChatCall,
        provider: str,
        usage: TokenUsage,
        cost_nanos: int,
        provider_attempts: int,
        latency_ms: int,
        lease_id: str,
    ) -> budget_pb2.CommitRequest:
        return budget_pb2.CommitRequest(
            request_id=call.request_id,
            cost_nanos=cost_nanos,
            provider=provider,
            model=call.route.name,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            run_id=call.run_id,
            agent=call.agent,
            config_version=call.config_version,
            cached_input_tokens=usage.cached_input_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            latency_ms=latency_ms,
            lease_id=lease_id,
            provider_attempts=provider_attempts,
        )

    async def _commit_waited(self, request: budget_pb2.CommitRequest) -> None:
        try:
            # The caller waits: five attempts, as before (backoff 50 ms to 400 ms).
            await self._send_commit(request, max_attempts=5)
        finally:
            if self.leases is not None and request.lease_id:
                self.leases.commit_done(request.lease_id)

    async def _send_commit(self, request: budget_pb2.CommitRequest, *, max_attempts: int) -> None:
        """Send one commit, retrying transient failures (backoff from 50 ms) for `max_attempts`
        attempts; idempotent by request id."""
        delay = 0.05
        for attempt in range(1, max_attempts + 1):
            try:
                await self._commits.commit(request)
                return
            except grpc.RpcError as exc:
                if exc.code() not in _TRANSIENT or attempt == max_attempts:
                    raise _error(exc, "budget") from None
                log.warning("budget commit failed; retrying", extra={"fields": {"request_id": request.request_id}})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _queue_answered(self) -> None:
        answered, self._answered = self._answered, []
        deadline = time.monotonic() + self._background_commit_s
        for a in answered:
            lease_id = ""
            try:
                lease_id = self.leases.settle(a.call.request_id, a.cost_nanos) if self.leases is not None else ""
                request = self._commit_request(
                    a.call, a.provider, a.usage, a.cost_nanos, a.provider_attempts, a.latency_ms, lease_id
                )
            except Exception as exc:  # noqa: BLE001 - the others' commits go on
                self._given_up(a.call.request_id, a.cost_nanos, lease_id, str(exc))
                continue
            self._send_in_background(_Sending(request, deadline))

    def _send_in_background(self, sending: _Sending) -> None:
        self._commits.submit(sending.request, lambda outcome: self._landed(sending, outcome))

    def _landed(self, sending: _Sending, outcome: CommitOutcome) -> None:
        request = sending.request
        if not isinstance(outcome, Exception):
            self._settled(request.lease_id)
            return
        if isinstance(outcome, grpc.RpcError):
            if outcome.code() in _TRANSIENT and time.monotonic() + sending.delay <= sending.deadline:
                log.warning("budget commit failed; retrying", extra={"fields": {"request_id": request.request_id}})
                asyncio.get_running_loop().call_later(sending.delay, self._send_in_background, sending)
                sending.delay = min(sending.delay * 2, 2.0)
                return
            outcome = _error(outcome, "budget")
        self._given_up(request.request_id, request.cost_nanos, request.lease_id, str(outcome))

    def _given_up(self, request_id: str, cost_nanos: int, lease_id: str, error: str) -> None:
        # The caller has its answer; the reservation (or lease hold) expires on its own.
        self.commits_lost += 1
        log.error(
            "budget commit given up; the call's usage is not in the ledger",
            extra={"fields": {"request_id": request_id, "cost_nanos": cost_nanos, "error": error}},
        )
        self._settled(lease_id)

    def _settled(self, lease_id: str) -> None:
        if self.leases is not None and lease_id:
            self.leases.commit_done(lease_id)
        self._unsettled -= 1
        if not self._unsettled:
            self._all_settled.set()

    async def flush_commits(self, timeout_s: float) -> bool:
        """Wait for the commits sent after their answers; False when some are still pending."""
        try:
            await asyncio.wait_for(self._all_settled.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def release(self, request_id: str) -> None:
        if self.leases is not None and self.leases.settle(request_id, None):
            return  # the lease keeps the money for the next call; nothing to tell the service
        try:
            await traced_call(
                self._stub.Release, f"{_BUDGET}Release", budget_pb2.ReleaseRequest(request_id=request_id), timeout=5.0
            )
        except grpc.RpcError:
            # The reservation expires on its own; the caller's error matters more than this one.
            log.warning("budget release failed; reservation will expire", extra={"fields": {"request_id": request_id}})

    async def aclose(self, commit_grace_s: float = 30.0) -> None:
        # Commits first: a lease closed under a commit still on its way would free its money twice.
        if not await self.flush_commits(commit_grace_s):
            log.error(
                "router stopping with budget commits not sent",
                extra={"fields": {"pending": self._unsettled}},
            )
            self._commits.cancel()
        for task in self._auth_tasks:
            task.cancel()
        if self.leases is not None:
            await self.leases.close_all()
        await self._channel.close()
