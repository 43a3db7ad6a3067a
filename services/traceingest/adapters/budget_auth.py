"""Who is asking: an Interlock API key checked by the budget service (AuthenticateApiKey)."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

import grpc

from interlock.budget.v1 import budget_pb2, budget_pb2_grpc
from interlock.errors import AuthenticationError, UnavailableError, from_rpc_error


@dataclass(frozen=True)
class Tenant:
    """The org and project an API key belongs to: all of usage its holder may read."""

    org: str
    project: str
    developer: str
    api_key_id: str


class BudgetAuthenticator:
    """Checks keys with the budget service; valid keys are cached for `cache_ttl_s`.

    Fails closed: with the budget service unreachable a keyed query is UNAVAILABLE, never
    answered unscoped.
    """

    def __init__(self, target: str, *, cache_ttl_s: float = 30.0, timeout_s: float = 5.0) -> None:
        self._target = target
        # Made on first use: an aio channel belongs to the event loop it was made in, and
        # the service is wired before its loop runs.
        self._channel: grpc.aio.Channel | None = None
        self._stub: budget_pb2_grpc.BudgetServiceAsyncStub | None = None
        self._ttl = cache_ttl_s
        self._timeout_s = timeout_s
        # Keyed by digest, so the process never holds a table of plaintext keys.
        self._cache: OrderedDict[str, tuple[float, Tenant]] = OrderedDict()

    async def authenticate(self, api_key: str) -> Tenant:
        now = time.monotonic()
        digest = hashlib.sha256(api_key.encode()).hexdigest()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self._target)
            self._stub = budget_pb2_grpc.BudgetServiceStub(self._channel)
        stub = self._stub
        try:
            response = await stub.AuthenticateApiKey(
                budget_pb2.AuthenticateApiKeyRequest(api_key=api_key), timeout=self._timeout_s
            )
        except grpc.RpcError as exc:
            err = from_rpc_error(exc)
            if isinstance(err, AuthenticationError):
                raise AuthenticationError("API key is not valid") from None
            raise UnavailableError("budget service is unavailable", metadata={"dependency": "budget"}) from None
        p = response.principal
        tenant = Tenant(org=p.org, project=p.project, developer=p.developer, api_key_id=p.api_key_id)
        self._cache[digest] = (now + self._ttl, tenant)
        self._cache.move_to_end(digest)
        while len(self._cache) > 10_000:
            self._cache.popitem(last=False)
        return tenant

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
