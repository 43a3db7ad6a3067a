"""RateLimitService: protobuf <-> domain; over limit is a response code, not an error."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from interlock.errors import InvalidArgumentError
from interlock.ratelimit.v1 import ratelimit_pb2
from interlock.services.ratelimit.adapters.stores import WindowStore
from interlock.services.ratelimit.domain.limits import (
    Charge,
    Entries,
    FailureMode,
    HitRequest,
    Limit,
    LimitConfig,
    LimitConfigError,
    LimitOverride,
    LimitUnit,
    RuleBook,
    check_one_per_unit,
    enforced,
    judge,
    plan_charges,
)

log = logging.getLogger("interlock.ratelimit")

_UNITS = {
    LimitUnit.SECOND: ratelimit_pb2.UNIT_SECOND,
    LimitUnit.MINUTE: ratelimit_pb2.UNIT_MINUTE,
    LimitUnit.HOUR: ratelimit_pb2.UNIT_HOUR,
    LimitUnit.DAY: ratelimit_pb2.UNIT_DAY,
}
_UNITS_BACK = {v: k for k, v in _UNITS.items()}
_MODES = {FailureMode.OPEN: ratelimit_pb2.FAILURE_MODE_OPEN, FailureMode.CLOSED: ratelimit_pb2.FAILURE_MODE_CLOSED}


def limit_to_pb(limit: Limit) -> ratelimit_pb2.RateLimit:
    return ratelimit_pb2.RateLimit(
        requests_per_unit=limit.requests_per_unit,
        unit=_UNITS[limit.unit],
        name=limit.name,
        shadow_mode=limit.shadow_mode,
        failure_mode=_MODES[limit.failure_mode],
    )


def _entries(raw: Any, field: str) -> Entries:
    if not raw:
        raise InvalidArgumentError("must hold at least one entry", field=field)
    for j, e in enumerate(raw):
        if not e.key:
            raise InvalidArgumentError("must not be empty", field=f"{field}[{j}].key")
    return tuple((e.key, e.value) for e in raw)


def _override_from_pb(o: ratelimit_pb2.LimitOverride) -> LimitOverride:
    if not o.domain:
        raise InvalidArgumentError("must not be empty", field="override.domain")
    entries = _entries(o.entries, "override.entries")
    limits = []
    for i, rl in enumerate(o.rate_limits):
        if rl.unit not in _UNITS_BACK:
            raise InvalidArgumentError("must be a unit", field=f"override.rate_limits[{i}].unit")
        unit = _UNITS_BACK[rl.unit]
        mode = FailureMode.CLOSED if rl.failure_mode == ratelimit_pb2.FAILURE_MODE_CLOSED else FailureMode.OPEN
        name = rl.name or "/".join([*(f"{k}={v}" for k, v in entries), unit.name.lower()])
        limits.append(Limit(name, rl.requests_per_unit, unit, rl.shadow_mode, mode))
    try:
        check_one_per_unit(limits, "override.rate_limits")
    except LimitConfigError as exc:
        raise InvalidArgumentError(str(exc), field="override.rate_limits") from None
    return LimitOverride(o.domain, entries, tuple(limits))


def override_to_pb(o: LimitOverride) -> ratelimit_pb2.LimitOverride:
    return ratelimit_pb2.LimitOverride(
        domain=o.domain,
        entries=[ratelimit_pb2.Entry(key=k, value=v) for k, v in o.entries],
        rate_limits=[limit_to_pb(limit) for limit in o.limits],
    )


# A lease is at most this share of the shortest window it charges: the hits it holds count
# that much longer than a per-call decision's would.
LEASE_WINDOW_SHARE = 20


class RateLimitServicer:
    def __init__(
        self, config: LimitConfig, store: WindowStore, lease_fill: float = 0.5, max_lease_ms: int = 5000
    ) -> None:
        self.rules = RuleBook(config)
        """The rules in force; replaced whole (config reload, overrides), never mutated."""
        self._store = store
        self._lease_fill = lease_fill
        self._max_lease_ms = max_lease_ms
        self.over_limit_total = 0
        self.shadow_over_limit_total = 0
        self.leases_granted = 0
        self.leases_refused = 0

    def swap_config(self, config: LimitConfig) -> None:
        self.rules = self.rules.with_config(config)

    async def refresh_overrides(self) -> None:
        """Take the overrides other replicas may have set in the shared store."""
        self.rules = self.rules.with_overrides(await self._store.load_overrides())

    def _hits(self, request: Any) -> list[HitRequest]:
        hits = []
        for i, d in enumerate(request.descriptors):
            entries = _entries(d.entries, f"descriptors[{i}].entries")
            hits.append(HitRequest(entries, d.hits_addend or getattr(request, "hits_addend", 0) or 1))
        return hits

    async def ShouldRateLimit(
        self, request: ratelimit_pb2.ShouldRateLimitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ratelimit_pb2.ShouldRateLimitResponse:
        if not request.domain:
            raise InvalidArgumentError("must not be empty", field="domain")
        if not request.descriptors:
            raise InvalidArgumentError("must hold at least one descriptor", field="descriptors")
        hits = self._hits(request)
        await self._apply_corrections(request.corrections)
        charges = plan_charges(self.rules, request.domain, hits)
        decision = await self._store.charge(charges)
        verdicts = judge(len(hits), charges, decision.outcomes, decision.admitted)
        response = ratelimit_pb2.ShouldRateLimitResponse(
            overall_code=ratelimit_pb2.CODE_OK if decision.admitted else ratelimit_pb2.CODE_OVER_LIMIT,
            decided_at_unix_ms=decision.decided_at_ms,
        )
        if not decision.admitted:
            self.over_limit_total += 1
        for hit, v in zip(hits, verdicts, strict=True):
            status = response.statuses.add(
                code=ratelimit_pb2.CODE_OVER_LIMIT if v.over_limit else ratelimit_pb2.CODE_OK,
                limit_remaining=v.remaining,
                duration_until_reset_ms=v.reset_in_ms,
                shadow_over_limit=v.shadow_over_limit,
                matched_limits=[limit_to_pb(limit) for limit in v.matched],
            )
            if v.limit is not None:
                status.current_limit.CopyFrom(limit_to_pb(v.limit))
            if v.shadow_over_limit:
                self._shadow_exceeded(request.domain, hit)
        return response

    def _shadow_exceeded(self, domain: str, hit: HitRequest) -> None:
        # Shadow rules are rolled out by watching this line and counter before enforcing.
        self.shadow_over_limit_total += 1
        log.info(
            "shadow limit exceeded",
            extra={"fields": {"domain": domain, "descriptor": "|".join(f"{k}={x}" for k, x in hit.entries)}},
        )

    async def _apply_corrections(self, corrections: Any) -> None:
        # Every correction is checked before any is applied: a bad request changes nothing.
        planned = [self._adjustments(c, f"corrections[{i}].") for i, c in enumerate(corrections)]
        # Applied first, so the hits a correction gives back are free for this decision.
        for adjustments, decided_at_ms in planned:
            await self._store.adjust(adjustments, decided_at_ms)

    async def LeaseHits(
        self, request: ratelimit_pb2.LeaseHitsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ratelimit_pb2.LeaseHitsResponse:
        """Take a block of hits for the caller to admit by itself for up to `lease_ms`.

        Exact in the same sense as ShouldRateLimit: the hits are charged now, to the slot of
        the lease's end, so each counts in every rolling window that holds the moment it is
        spent. A lease is only granted while every enforced counter stays within
        `lease_fill` of its limit: the rest of a window is decided per call."""
        if not request.domain:
            raise InvalidArgumentError("must not be empty", field="domain")
        if not request.descriptors:
            raise InvalidArgumentError("must hold at least one descriptor", field="descriptors")
        if request.lease_ms <= 0:
            raise InvalidArgumentError("must be positive", field="lease_ms")
        hits = self._hits(request)
        await self._apply_corrections(request.corrections)
        charges = plan_charges(self.rules, request.domain, hits)
        response = ratelimit_pb2.LeaseHitsResponse()
        for i in range(len(hits)):
            response.statuses.add(matched_limits=[limit_to_pb(c.limit) for c in charges if c.descriptor == i])
        shortest = min((c.limit.unit.window_ms for c in charges if enforced(c)), default=0)
        lease_ms = min(request.lease_ms, self._max_lease_ms)
        if shortest:
            lease_ms = min(lease_ms, shortest // LEASE_WINDOW_SHARE)
        if lease_ms <= 0:
            self.leases_refused += 1
            response.reason = "window_too_short"
            return response
        decision = await self._store.charge(charges, ahead_ms=lease_ms, fill=self._lease_fill)
        # A shadow rule the block would pass is reported as a call passing it would be.
        for hit, v in zip(hits, judge(len(hits), charges, decision.outcomes, decision.admitted), strict=True):
            if v.shadow_over_limit:
                self._shadow_exceeded(request.domain, hit)
        if not decision.admitted:
            self.leases_refused += 1
            response.reason = "near_limit"
            return response
        self.leases_granted += 1
        response.granted = True
        response.lease_ms = lease_ms
        response.charged_at_unix_ms = decision.decided_at_ms + lease_ms
        return response

    async def AdjustHits(
        self, request: ratelimit_pb2.AdjustHitsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ratelimit_pb2.AdjustHitsResponse:
        adjustments, decided_at_ms = self._adjustments(request)
        await self._store.adjust(adjustments, decided_at_ms)
        return ratelimit_pb2.AdjustHitsResponse()

    def _adjustments(
        self, request: ratelimit_pb2.AdjustHitsRequest, field_prefix: str = ""
    ) -> tuple[list[tuple[Charge, int]], int]:
        """Validate one correction (AdjustHits' request, or one of ShouldRateLimit's
        `corrections`) and plan it: each counter it touches with its delta, and its slot.

        Planning does no I/O, so ShouldRateLimit can check all its corrections before it
        applies any; field names in errors carry `field_prefix`, e.g. `corrections[0].`."""
        if not request.domain:
            raise InvalidArgumentError("must not be empty", field=f"{field_prefix}domain")
        if request.decided_at_unix_ms <= 0:
            raise InvalidArgumentError(
                "must be the decision's decided_at_unix_ms", field=f"{field_prefix}decided_at_unix_ms"
            )
        adjustments = []
        for i, a in enumerate(request.adjustments):
            entries = _entries(a.entries, f"{field_prefix}adjustments[{i}].entries")
            for charge in plan_charges(self.rules, request.domain, [HitRequest(entries, 0)]):
                adjustments.append((charge, a.delta))
        return adjustments, request.decided_at_unix_ms

    async def SetLimitOverride(
        self, request: ratelimit_pb2.SetLimitOverrideRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ratelimit_pb2.SetLimitOverrideResponse:
        override = _override_from_pb(request.override)
        await self._store.save_override(override)
        await self.refresh_overrides()
        log.info(
            "limit override set",
            extra={"fields": {"domain": override.domain, "limits": [limit.name for limit in override.limits]}},
        )
        return ratelimit_pb2.SetLimitOverrideResponse(override=override_to_pb(override))

    async def ListLimitOverrides(
        self, request: ratelimit_pb2.ListLimitOverridesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ratelimit_pb2.ListLimitOverridesResponse:
        overrides = await self._store.load_overrides()
        chosen = sorted(
            (o for o in overrides if not request.domain or o.domain == request.domain),
            key=lambda o: (o.domain, o.entries),
        )
        return ratelimit_pb2.ListLimitOverridesResponse(overrides=[override_to_pb(o) for o in chosen])
