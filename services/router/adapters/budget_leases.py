"""Budget leases held by the router, and batched commits to the budget service.

A lease is a prepaid slice of every budget above one principal (org, project, developer,
API key). The budget service counts what a lease holds as reserved spend, so the total
leased never exceeds what remains. The router reserves a call's worst case against its
lease in memory (no round trip), commits the actual cost with the lease's id, and gives
back what it does not use: when a call does not fit, when the lease goes idle, and before
the lease expires. A lease that has spent half of its slice is topped up in the background
while calls go on reserving what it still holds: under steady load no call waits for the
budget service as long as half a slice lasts longer than the top-up's round trip. A call
that does not fit a lease after one attempt to grow it falls back to an exact reservation of
its own, so a nearly spent budget is still used up.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from interlock.budget.v1 import budget_pb2
from interlock.services.router.adapters.background import start_soon
from interlock.services.router.domain.flow import Caller

log = logging.getLogger("interlock.router.budget")


@dataclass(frozen=True, slots=True)
class LeasePolicy:
    """How the router uses leases; `slice_nanos` 0 turns them off."""

    slice_nanos: int = 0
    """What a lease asks for beyond the call that needs it."""
    ttl_s: float = 30.0
    """Life of a lease on the budget service; renewed while in use."""
    idle_s: float = 30.0
    """A lease unused this long with no call in flight is given back."""
    refill_retry_s: float = 1.0
    """After a top-up that failed or was cut short by the budget service (a budget running
    low), the next one waits this long; calls meanwhile grow the lease when it runs dry."""


@dataclass(slots=True)
class Lease:
    """The router's view of one lease. Money: granted = in flight + consumed + available."""

    lease_id: str
    caller: Caller
    granted: int = 0
    """Net nanos the budget service granted (as of the last change the router made)."""
    inflight: int = 0
    """Worst cases of calls reserved against the lease and not yet settled."""
    consumed: int = 0
    """Actual costs of calls settled under the lease."""
    committing: int = 0
    """Calls settled under the lease whose commit has not reached the budget service yet:
    the lease is not closed while any is on its way (closing frees what the service has not
    seen committed, which would free their money twice)."""
    seq: int = 0
    usable_until: float = 0.0
    """Monotonic time after which no new call is reserved against it (well before expiry)."""
    expires_at: float = 0.0
    """Monotonic time the budget service frees it unless renewed."""
    last_used: float = 0.0
    closed: bool = False
    refilling: bool = False
    """A top-up is on its way (or waiting for the lock)."""
    refill_after: float = 0.0
    """Monotonic time before which no top-up is started (one just fell short)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def available(self) -> int:
        return self.granted - self.inflight - self.consumed

    def usable(self, now: float) -> bool:
        return not self.closed and now < self.usable_until


def principal_pb(caller: Caller) -> budget_pb2.Principal:
    return budget_pb2.Principal(
        org=caller.org, project=caller.project, developer=caller.developer, api_key_id=caller.api_key_id
    )


LeaseRpc = Callable[[budget_pb2.LeaseRequest, float], Awaitable[budget_pb2.LeaseResponse]]


class LeaseBook:
    """The router's leases, one per principal, with the calls reserved against them."""

    def __init__(self, policy: LeasePolicy, rpc: LeaseRpc, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._rpc = rpc
        self._clock = clock
        self._leases: dict[Caller, Lease] = {}
        self._held: dict[str, tuple[Lease, int]] = {}
        self._committing: dict[str, Lease] = {}
        self._upkeep: asyncio.Task[None] | None = None
        self._refills: set[asyncio.Task[None]] = set()
        self.local_reservations = 0
        """Calls reserved against a lease without a round trip."""
        self.refills = 0
        """Top-ups sent ahead of need (each a round trip no call waited for)."""

    def take(self, request_id: str, caller: Caller, amount: int) -> bool:
        """Reserve against the caller's lease in memory; False when it has no room."""
        lease = self._leases.get(caller)
        now = self._clock()
        if lease is None or not lease.usable(now) or lease.available < amount:
            return False
        self._hold(lease, request_id, amount, now)
        return True

    def _hold(self, lease: Lease, request_id: str, amount: int, now: float) -> None:
        lease.inflight += amount
        lease.last_used = now
        self._held[request_id] = (lease, amount)
        self.local_reservations += 1
        if (
            lease.available < self.policy.slice_nanos // 2
            and not lease.refilling
            and now >= lease.refill_after
            and not lease.closed
        ):
            lease.refilling = True
            # Work for the calls to come, after this one (background.START_DELAY_S).
            start_soon(self._refill(lease), self._refills)

    async def _refill(self, lease: Lease) -> None:
        """Top the lease up to its slice ahead of need (calls keep reserving what it holds)."""
        try:
            async with lease.lock:
                now = self._clock()
                short = self.policy.slice_nanos - lease.available
                if lease.closed or not lease.usable(now) or self._leases.get(lease.caller) is not lease or short <= 0:
                    return
                await self._change(lease, 5.0, grow=short)
                self.refills += 1
                if lease.available < self.policy.slice_nanos // 2:
                    lease.refill_after = self._clock() + self.policy.refill_retry_s
        except Exception as exc:  # noqa: BLE001 - a call that finds the lease dry grows it itself
            lease.refill_after = self._clock() + self.policy.refill_retry_s
            log.warning("budget lease top-up failed", extra={"fields": {"error": str(exc)}})
        finally:
            lease.refilling = False

    async def grow_and_take(self, request_id: str, caller: Caller, amount: int, timeout_s: float) -> bool:
        """Grow the caller's lease for this call (one round trip, shared by concurrent callers).

        When even then the call does not fit, what the lease has unused goes back to the
        budgets, so an exact reservation (by this router or another) can use it."""
        self._ensure_upkeep()
        lease = self._leases.get(caller)
        # A lease past its usable time is replaced (its calls in flight still commit under it);
        # one not opened yet is being opened by a concurrent call: wait for that.
        if lease is None or lease.closed or (lease.expires_at > 0 and self._clock() >= lease.usable_until):
            lease = self._leases[caller] = Lease(f"lease-{uuid.uuid4().hex}", caller)
        async with lease.lock:
            now = self._clock()
            if lease.usable(now) and lease.available >= amount:
                self._hold(lease, request_id, amount, now)
                return True
            if not lease.closed:
                await self._change(lease, timeout_s, grow=self.policy.slice_nanos + amount)
            now = self._clock()
            if lease.usable(now) and lease.available >= amount:
                self._hold(lease, request_id, amount, now)
                return True
            if lease.available > 0 and not lease.closed:
                await self._change(lease, timeout_s, give_back=lease.available)
            return False

    def settle(self, request_id: str, cost_nanos: int | None) -> str:
        """The call's lease id ("" when it reserved on its own); cost None for a release.

        A commit (cost given) is on its way from here until `commit_done(lease_id)`."""
        held = self._held.pop(request_id, None)
        if held is None:
            return ""
        lease, amount = held
        lease.inflight -= amount
        if cost_nanos is not None:
            lease.consumed += cost_nanos
            lease.committing += 1
            self._committing[lease.lease_id] = lease
        return lease.lease_id

    def commit_done(self, lease_id: str) -> None:
        """A commit settled under `lease_id` reached the budget service (or was given up)."""
        lease = self._committing.get(lease_id)
        if lease is None:
            return
        lease.committing -= 1
        if lease.committing <= 0:
            del self._committing[lease_id]

    async def _change(
        self, lease: Lease, timeout_s: float, grow: int = 0, give_back: int = 0, close: bool = False
    ) -> None:
        """One change of a lease on the budget service; caller holds lease.lock."""
        lease.seq += 1
        request = budget_pb2.LeaseRequest(
            lease_id=lease.lease_id,
            principal=principal_pb(lease.caller),
            seq=lease.seq,
            grow_nanos=grow,
            return_nanos=max(0, give_back),
            ttl_seconds=max(1, round(self.policy.ttl_s)),
            close=close,
        )
        sent = self._clock()
        response = await self._rpc(request, timeout_s)
        # Granted net of what was given back; consumption is the router's own count (commits
        # in flight are not yet in the service's figure).
        lease.granted = response.granted_nanos
        if close:
            lease.closed = True
            return
        # Expiry counted from when the change was sent: never later than the service's.
        lease.expires_at = sent + self.policy.ttl_s
        lease.usable_until = sent + self.policy.ttl_s / 2

    def _ensure_upkeep(self) -> None:
        if self._upkeep is None or self._upkeep.done():
            self._upkeep = asyncio.get_running_loop().create_task(self._upkeep_loop())

    async def _upkeep_loop(self) -> None:
        """Renew leases in use, give back idle ones; runs while the router has leases."""
        interval = max(0.05, min(self.policy.idle_s, self.policy.ttl_s / 4) / 2)
        while self._leases:
            await asyncio.sleep(interval)
            for caller, lease in list(self._leases.items()):
                try:
                    await self._tend(caller, lease)
                except Exception as exc:  # noqa: BLE001 - the next round retries; expiry is the backstop
                    log.warning("budget lease upkeep failed", extra={"fields": {"error": str(exc)}})

    async def _tend(self, caller: Caller, lease: Lease) -> None:
        now = self._clock()
        if lease.closed:
            if lease.inflight == 0 and self._leases.get(caller) is lease:
                del self._leases[caller]
            return
        if lease.inflight == 0 and lease.committing == 0 and now - lease.last_used >= self.policy.idle_s:
            async with lease.lock:
                if lease.inflight == 0 and lease.committing == 0 and not lease.closed:
                    await self._change(lease, 5.0, close=True)
            return
        if now >= lease.usable_until - self.policy.ttl_s / 4:
            # Renew before new calls would stop using it, and keep calls in flight covered.
            async with lease.lock:
                if not lease.closed:
                    await self._change(lease, 5.0)

    async def close_all(self) -> None:
        """Give back every lease (graceful stop); what is in flight still commits. The
        router sends its pending commits first: a lease with commits on their way keeps its
        hold until it expires."""
        if self._upkeep is not None:
            self._upkeep.cancel()
        for lease in list(self._leases.values()):
            if lease.closed:
                continue
            async with lease.lock:
                try:
                    if lease.inflight or lease.committing:
                        # Calls still in flight keep their hold (it expires with the lease).
                        await self._change(lease, 5.0, give_back=max(0, lease.available))
                    else:
                        await self._change(lease, 5.0, close=True)
                except Exception as exc:  # noqa: BLE001 - the service frees it at expiry
                    log.warning("budget lease close failed", extra={"fields": {"error": str(exc)}})
        self._leases.clear()


CommitOutcome = budget_pb2.CommitResponse | Exception
"""What a queued commit comes to: the service's answer, or why it did not land."""


class CommitBatcher:
    """Sends commits as they come, batching those that queue while a batch is in flight.

    One call alone goes out at once (no added latency); under load, many commits share one
    round trip and one ledger transaction. With a linger (commits nobody waits for), every
    batch short of `max_batch` waits that long for company first.

    A commit is queued either awaited (`commit`) or with a callback (`submit`): the second
    costs no task or future per commit, for the commits a router sends after the answers.
    """

    def __init__(
        self,
        send: Callable[[list[budget_pb2.CommitRequest]], Awaitable[list[budget_pb2.CommitResponse]]],
        max_batch: int = 256,
        linger_s: float = 0.0,
    ) -> None:
        """`linger_s`: how long a batch short of `max_batch` waits for company; 0 for commits
        a caller waits on, some milliseconds for commits sent after the answer."""
        self._send = send
        self._max = max_batch
        self._linger_s = linger_s
        self._queue: list[
            tuple[budget_pb2.CommitRequest, asyncio.Future[budget_pb2.CommitResponse] | Callable[[CommitOutcome], None]]
        ] = []
        self._sender: asyncio.Task[None] | None = None

    async def commit(self, request: budget_pb2.CommitRequest) -> budget_pb2.CommitResponse:
        future: asyncio.Future[budget_pb2.CommitResponse] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        self._start()
        return await future

    def submit(self, request: budget_pb2.CommitRequest, on_outcome: Callable[[CommitOutcome], None]) -> None:
        """Queue `request`; `on_outcome` gets its response or its error, from the event loop."""
        self._queue.append((request, on_outcome))
        self._start()

    def _start(self) -> None:
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._drain())

    def cancel(self) -> None:
        """Stop sending (a router stopping after its grace); what is queued stays unsent."""
        if self._sender is not None:
            self._sender.cancel()

    async def _drain(self) -> None:
        while self._queue:
            # Each batch that is not full lingers, the first and those queued while one was
            # in flight alike: under load, commits then share round trips by the dozen
            # instead of following each other one or two at a time.
            if self._linger_s > 0 and len(self._queue) < self._max:
                await asyncio.sleep(self._linger_s)
            batch, self._queue = self._queue[: self._max], self._queue[self._max :]
            try:
                results = await self._send([r for r, _ in batch])
            except Exception as exc:  # noqa: BLE001 - each commit gets its own outcome
                if len(batch) == 1:
                    self._resolve(batch[0][1], exc)
                    continue
                # One bad commit fails its batch: settle the rest one by one.
                for request, sink in batch:
                    try:
                        self._resolve(sink, (await self._send([request]))[0])
                    except Exception as one_exc:  # noqa: BLE001
                        self._resolve(sink, one_exc)
                continue
            for (_, sink), result in zip(batch, results, strict=True):
                self._resolve(sink, result)

    @staticmethod
    def _resolve(
        sink: asyncio.Future[budget_pb2.CommitResponse] | Callable[[CommitOutcome], None], outcome: CommitOutcome
    ) -> None:
        if not isinstance(sink, asyncio.Future):
            try:
                sink(outcome)
            except Exception:  # one callback's bug must not stop the others' commits
                log.exception("commit outcome handler failed")
            return
        if sink.done():
            return
        if isinstance(outcome, Exception):
            sink.set_exception(outcome)
        else:
            sink.set_result(outcome)
