"""Budget domain: principals, scopes, API keys and the reservation decision. No I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

from interlock.errors import InvalidArgumentError
from interlock.services.budget.domain.window import NO_WINDOW, Window, WindowSpan

DEFAULT_ORG = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KEY = re.compile(r"^il_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


def check_name(field: str, value: str) -> str:
    """Org, project and developer names: 1-64 of letters, digits, `.`, `_`, `-`."""
    if not _NAME.match(value):
        raise InvalidArgumentError("must be 1-64 characters of letters, digits, '.', '_' or '-'", field=field)
    return value


@dataclass(frozen=True, slots=True)
class Principal:
    """Who pays for a call."""

    org: str
    project: str
    developer: str
    api_key_id: str = ""


class ScopeKind(Enum):
    ORG = "org"
    PROJECT = "project"
    DEVELOPER = "developer"
    API_KEY = "api_key"


@dataclass(frozen=True, slots=True)
class Scope:
    """One budget: an org, a project of it, a developer of a project, or one API key."""

    kind: ScopeKind
    org: str
    project: str = ""
    developer: str = ""
    api_key_id: str = ""

    @property
    def key(self) -> str:
        """Stable storage key, e.g. `project:acme/search` or `api_key:acme/search/alice/0a1b...`."""
        parts = {
            ScopeKind.ORG: [self.org],
            ScopeKind.PROJECT: [self.org, self.project],
            ScopeKind.DEVELOPER: [self.org, self.project, self.developer],
        }.get(self.kind, [self.org, self.project, self.developer, self.api_key_id])
        return f"{self.kind.value}:{'/'.join(parts)}"


def scopes_of(principal: Principal) -> list[Scope]:
    """Every budget a principal's spend counts against, widest first."""
    scopes = [
        Scope(ScopeKind.ORG, principal.org),
        Scope(ScopeKind.PROJECT, principal.org, principal.project),
        Scope(ScopeKind.DEVELOPER, principal.org, principal.project, principal.developer),
    ]
    if principal.api_key_id:
        scopes.append(
            Scope(ScopeKind.API_KEY, principal.org, principal.project, principal.developer, principal.api_key_id)
        )
    return scopes


@lru_cache(maxsize=4096)
def scope_keys(principal: Principal) -> tuple[str, ...]:
    """The storage keys of `scopes_of(principal)`, widest first; cached (the ledger asks per call)."""
    return tuple(s.key for s in scopes_of(principal))


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """A budget as set: its limit, the window it applies to and its alert thresholds."""

    limit_nanos: int
    window: Window = Window.NONE
    time_zone: str = "UTC"
    """IANA zone whose calendar the window follows."""
    alert_thresholds_pct: tuple[int, ...] = ()
    """Percentages of the limit; crossing one emits one alert per window."""


def check_thresholds(field: str, values: Sequence[int]) -> tuple[int, ...]:
    """1-1000 percent each (over 100 warns of overspend by late commits); sorted, deduplicated."""
    for v in values:
        if not 1 <= v <= 1000:
            raise InvalidArgumentError("each threshold must be 1-1000 percent", field=field)
    return tuple(sorted(set(values)))


@dataclass(frozen=True, slots=True)
class ScopeSpend:
    """A scope's limit and what is already spent (in the current window) or held against it."""

    scope_key: str
    limit_nanos: int | None
    """None: no limit set."""
    committed_nanos: int
    reserved_nanos: int
    window: Window = Window.NONE
    time_zone: str = "UTC"
    span: WindowSpan = NO_WINDOW
    """The current window; reset_at 0 when the budget has no window."""
    alert_thresholds_pct: tuple[int, ...] = ()

    @property
    def remaining_nanos(self) -> int | None:
        if self.limit_nanos is None:
            return None
        return max(0, self.limit_nanos - self.committed_nanos - self.reserved_nanos)


@dataclass(frozen=True, slots=True)
class ReservationDecision:
    granted: bool
    exceeded_scope: str = ""
    remaining_nanos: int = 0
    refused_by: ScopeSpend | None = None
    """When not granted: the budget that refused, with its limit, spend and reset time."""


def decide_reservation(amount_nanos: int, spends: Sequence[ScopeSpend]) -> ReservationDecision:
    """Grant only if the amount fits under every limited scope (committed + held + amount <= limit)."""
    for spend in spends:
        if spend.limit_nanos is None:
            continue
        remaining = spend.limit_nanos - spend.committed_nanos - spend.reserved_nanos
        if amount_nanos > remaining:
            return ReservationDecision(False, spend.scope_key, max(0, remaining), spend)
    return ReservationDecision(True)


@dataclass(frozen=True, slots=True)
class LeaseChange:
    """What a holder asks of its lease."""

    grow_nanos: int = 0
    return_nanos: int = 0
    """Unused nanos to give back."""
    close: bool = False
    """Give back everything unused and end the lease."""


@dataclass(frozen=True, slots=True)
class LeaseState:
    """A lease after a change: what it holds over its life and what calls under it spent."""

    granted_nanos: int
    """Granted over the lease's life, net of what was given back."""
    consumed_nanos: int
    """Committed by calls made under the lease."""
    added_nanos: int = 0
    """Added by this change."""
    expires_at: float = 0.0
    """Unix seconds."""
    limiting_scope: str = ""
    """When growth was cut short: the budget with least room."""

    @property
    def unused_nanos(self) -> int:
        return max(0, self.granted_nanos - self.consumed_nanos)


def lease_growth(want_nanos: int, spends: Sequence[ScopeSpend], max_share: float) -> tuple[int, str]:
    """How much a lease may grow: at most `max_share` of the room left under the tightest budget.

    The share keeps money spread across many holders (router replicas) and shrinks leases as
    a budget runs low, so near its end calls fall back to exact per-call reservations and
    little money sits unused in leases. Returns (nanos, limiting scope or "")."""
    grant, limiting = max(0, want_nanos), ""
    for spend in spends:
        if spend.limit_nanos is None:
            continue
        room = max(0, spend.limit_nanos - spend.committed_nanos - spend.reserved_nanos)
        cap = int(room * max_share)
        if cap < grant:
            grant, limiting = cap, spend.scope_key
    return grant, limiting


def crossed_thresholds(limit_nanos: int, before_nanos: int, after_nanos: int, thresholds: Sequence[int]) -> list[int]:
    """Thresholds (percent of the limit) that spend going from `before` to `after` reached for the first time."""
    crossed = []
    for pct in thresholds:
        # Integer comparison: spend * 100 >= limit * pct, so no rounding can skip an alert.
        if before_nanos * 100 < limit_nanos * pct <= after_nanos * 100:
            crossed.append(pct)
    return crossed


@dataclass(frozen=True, slots=True)
class NewApiKey:
    """A freshly made key: the secret is shown once, only its hash is stored."""

    key_id: str
    api_key: str
    secret_hash: bytes


def new_api_key() -> NewApiKey:
    key_id = secrets.token_hex(8)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return NewApiKey(key_id, f"il_{key_id}_{secret}", hash_secret(secret))


def hash_secret(secret: str) -> bytes:
    # Keys carry 256 random bits, so a fast hash suffices; a slow KDF would only add latency.
    return hashlib.sha256(secret.encode()).digest()


def split_api_key(api_key: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, None otherwise."""
    match = _KEY.match(api_key)
    return (match.group(1), match.group(2)) if match else None


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
