"""RateLimitService: protobuf <-> domain; over limit is a response code, not an error."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

from interlock.errors import InvalidArgumentError
from interlock.ratelimit.v1 import ratelimit_pb2
from interlock.services.ratelimit.adapters.stores import CounterStore
from interlock.services.ratelimit.domain.limits import HitRequest, LimitConfig, LimitUnit, judge, plan_charges

_UNITS = {
    LimitUnit.SECOND: ratelimit_pb2.UNIT_SECOND,
    LimitUnit.MINUTE: ratelimit_pb2.UNIT_MINUTE,
    LimitUnit.HOUR: ratelimit_pb2.UNIT_HOUR,
    LimitUnit.DAY: ratelimit_pb2.UNIT_DAY,
}


class RateLimitServicer:
    def __init__(self, config: LimitConfig, store: CounterStore, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._store = store
        self._clock = clock

    async def ShouldRateLimit(
        self, request: ratelimit_pb2.ShouldRateLimitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ratelimit_pb2.ShouldRateLimitResponse:
        if not request.domain:
            raise InvalidArgumentError("must not be empty", field="domain")
        if not request.descriptors:
            raise InvalidArgumentError("must hold at least one descriptor", field="descriptors")
        hits: list[HitRequest] = []
        for i, d in enumerate(request.descriptors):
            if not d.entries:
                raise InvalidArgumentError("must hold at least one entry", field=f"descriptors[{i}].entries")
            for j, e in enumerate(d.entries):
                if not e.key:
                    raise InvalidArgumentError("must not be empty", field=f"descriptors[{i}].entries[{j}].key")
            n = d.hits_addend or request.hits_addend or 1
            hits.append(HitRequest(tuple((e.key, e.value) for e in d.entries), n))
        now = self._clock()
        charges = plan_charges(self.config, request.domain, hits, now)
        before = await self._store.charge(charges)
        verdicts = judge(charges, before, now)
        response = ratelimit_pb2.ShouldRateLimitResponse(
            overall_code=ratelimit_pb2.CODE_OVER_LIMIT if any(v.over_limit for v in verdicts) else ratelimit_pb2.CODE_OK
        )
        for v in verdicts:
            status = response.statuses.add(
                code=ratelimit_pb2.CODE_OVER_LIMIT if v.over_limit else ratelimit_pb2.CODE_OK,
                limit_remaining=v.remaining,
                duration_until_reset_ms=v.reset_in_ms,
            )
            if v.limit is not None:
                status.current_limit.CopyFrom(
                    ratelimit_pb2.RateLimit(
                        requests_per_unit=v.limit.requests_per_unit, unit=_UNITS[v.limit.unit], name=v.limit.name
                    )
                )
        return response
