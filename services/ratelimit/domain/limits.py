"""Rate-limit rules: the parsed config, runtime overrides, and what a request charges.

Pure: no I/O, no protobuf. Config follows Envoy's rate limit service: a domain holds a
tree of descriptors; each node matches one entry by key and, optionally, value; a node
with a value beats the generic node of the same key. The limits of the deepest node
matching the whole descriptor apply. A node may carry several limits (one per unit, e.g.
600 a minute and 10,000 a day); each is its own sliding-window counter (domain/window.py).

Per limit: `shadow_mode` (count and log, never refuse) and `failure_mode` (what the
router does with this limit when the rate-limiter cannot be reached).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Entries = tuple[tuple[str, str], ...]


class LimitUnit(enum.Enum):
    SECOND = 1
    MINUTE = 60
    HOUR = 3600
    DAY = 86400

    @property
    def seconds(self) -> int:
        return self.value

    @property
    def window_ms(self) -> int:
        return self.value * 1000


class FailureMode(enum.Enum):
    OPEN = "open"
    """Admit (and count) when the rate-limiter is unreachable: availability first."""
    CLOSED = "closed"
    """Refuse when the rate-limiter is unreachable: the limit is a hard contract."""


class LimitConfigError(ValueError):
    """The limits file or an override is not valid; the message names the bad value's path."""


@dataclass(frozen=True, slots=True)
class Limit:
    name: str
    requests_per_unit: int
    """Allowed hits in any rolling window of one unit (requests, or tokens for TPM rules)."""
    unit: LimitUnit
    shadow_mode: bool = False
    """Count and log when exceeded, never refuse."""
    failure_mode: FailureMode = FailureMode.OPEN


@dataclass(frozen=True, slots=True)
class DescriptorNode:
    key: str
    value: str | None
    limits: tuple[Limit, ...]
    children: tuple[DescriptorNode, ...] = ()


@dataclass(frozen=True, slots=True)
class LimitConfig:
    """Immutable parsed config: domain -> descriptor trees."""

    domains: Mapping[str, tuple[DescriptorNode, ...]] = field(default_factory=dict)

    def find(self, domain: str, entries: Sequence[tuple[str, str]]) -> tuple[Limit, ...]:
        nodes = self.domains.get(domain, ())
        limits: tuple[Limit, ...] = ()
        for key, value in entries:
            exact = next((n for n in nodes if n.key == key and n.value == value), None)
            node = exact or next((n for n in nodes if n.key == key and n.value is None), None)
            if node is None:
                return ()
            limits = node.limits
            nodes = node.children
        return limits


@dataclass(frozen=True, slots=True)
class LimitOverride:
    """A runtime rule for one exact descriptor (`interlock limits set`)."""

    domain: str
    entries: Entries
    limits: tuple[Limit, ...]


@dataclass(frozen=True, slots=True)
class RuleBook:
    """The config plus runtime overrides; swapped whole, never mutated."""

    config: LimitConfig = field(default_factory=LimitConfig)
    overrides: Mapping[tuple[str, Entries], tuple[Limit, ...]] = field(default_factory=dict)

    def limits_for(self, domain: str, entries: Entries) -> tuple[Limit, ...]:
        override = self.overrides.get((domain, entries))
        return override if override is not None else self.config.find(domain, entries)

    def with_config(self, config: LimitConfig) -> RuleBook:
        return RuleBook(config, self.overrides)

    def with_overrides(self, overrides: Sequence[LimitOverride]) -> RuleBook:
        return RuleBook(self.config, {(o.domain, o.entries): o.limits for o in overrides if o.limits})


def parse_limit_config(docs: Sequence[Mapping[str, Any]]) -> LimitConfig:
    """Parse one mapping per domain: {domain, descriptors: [{key, value?, rate_limit?, descriptors?}]}.

    `rate_limit` is one mapping or a list of them: {unit, requests_per_unit, name?,
    shadow_mode?, failure_mode?: open|closed}; at most one per unit.
    """
    domains: dict[str, tuple[DescriptorNode, ...]] = {}
    for i, doc in enumerate(docs):
        if not isinstance(doc, Mapping):
            raise LimitConfigError(f"[{i}]: must be a mapping")
        domain = doc.get("domain")
        if not isinstance(domain, str) or not domain:
            raise LimitConfigError(f"[{i}].domain: must be a non-empty string")
        if domain in domains:
            raise LimitConfigError(f"[{i}].domain: {domain!r} appears twice")
        domains[domain] = _nodes(doc.get("descriptors") or [], f"{domain}.descriptors")
    return LimitConfig(domains)


def parse_limit(raw: Any, where: str, default_name: str) -> Limit:
    if not isinstance(raw, Mapping):
        raise LimitConfigError(f"{where}: must be a mapping")
    rpu = raw.get("requests_per_unit")
    if not isinstance(rpu, int) or isinstance(rpu, bool) or not 0 <= rpu < 2**32:
        raise LimitConfigError(f"{where}.requests_per_unit: must be an integer from 0 to 2^32-1")
    try:
        unit = LimitUnit[str(raw.get("unit", "")).upper()]
    except KeyError:
        raise LimitConfigError(f"{where}.unit: must be second, minute, hour or day") from None
    shadow = raw.get("shadow_mode", False)
    if not isinstance(shadow, bool):
        raise LimitConfigError(f"{where}.shadow_mode: must be true or false")
    try:
        mode = FailureMode(str(raw.get("failure_mode", "open")).lower())
    except ValueError:
        raise LimitConfigError(f"{where}.failure_mode: must be open or closed") from None
    name = raw.get("name") or f"{default_name}/{unit.name.lower()}"
    return Limit(str(name), rpu, unit, shadow, mode)


def check_one_per_unit(limits: Sequence[Limit], where: str) -> None:
    units = [limit.unit for limit in limits]
    if len(set(units)) != len(units):
        raise LimitConfigError(f"{where}: at most one limit per unit")


def _nodes(raw: Any, path: str) -> tuple[DescriptorNode, ...]:
    if not isinstance(raw, list):
        raise LimitConfigError(f"{path}: must be a list")
    out = []
    seen: set[tuple[str, str | None]] = set()
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not item["key"]:
            raise LimitConfigError(f"{where}.key: must be a non-empty string")
        value = item.get("value")
        if value is not None and not isinstance(value, str):
            raise LimitConfigError(f"{where}.value: must be a string")
        if (item["key"], value) in seen:
            raise LimitConfigError(f"{where}: duplicate descriptor {item['key']}={value}")
        seen.add((item["key"], value))
        raw_limits = item.get("rate_limit")
        if raw_limits is None:
            raw_limits = []
        elif not isinstance(raw_limits, list):
            raw_limits = [raw_limits]
        default_name = f"{item['key']}{'=' + value if value else ''}"
        limits: tuple[Limit, ...]
        if len(raw_limits) == 1:
            limits = (parse_limit(raw_limits[0], f"{where}.rate_limit", default_name),)
        else:
            limits = tuple(parse_limit(r, f"{where}.rate_limit[{j}]", default_name) for j, r in enumerate(raw_limits))
        check_one_per_unit(limits, f"{where}.rate_limit")
        out.append(
            DescriptorNode(item["key"], value, limits, _nodes(item.get("descriptors") or [], f"{where}.descriptors"))
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class HitRequest:
    """One descriptor to charge."""

    entries: Entries
    hits: int


@dataclass(frozen=True, slots=True)
class Charge:
    """One sliding-window counter a request charges: its key, limit and hits."""

    descriptor: int
    """Index of the request descriptor this charge belongs to."""
    counter_key: str
    limit: Limit
    hits: int


def counter_key(domain: str, entries: Entries, unit: LimitUnit) -> str:
    # The limit's value is not part of the key, so a changed limit keeps the hits already counted.
    return "|".join([domain, *(f"{k}={v}" for k, v in entries), unit.name])


def plan_charges(rules: RuleBook, domain: str, requests: Sequence[HitRequest]) -> list[Charge]:
    """Every counter the request charges, in descriptor order."""
    out = []
    for i, req in enumerate(requests):
        for limit in rules.limits_for(domain, req.entries):
            out.append(Charge(i, counter_key(domain, req.entries, limit.unit), limit, req.hits))
    return out


@dataclass(frozen=True, slots=True)
class ChargeOutcome:
    """What a store found for one charge: hits used before, and the window's timing."""

    used: int
    wait_ms: int
    clear_ms: int


@dataclass(frozen=True, slots=True)
class DescriptorVerdict:
    over_limit: bool
    limit: Limit | None
    """The limit that decided: the refusing one, else the one with the fewest hits left."""
    remaining: int
    reset_in_ms: int
    shadow_over_limit: bool = False
    matched: tuple[Limit, ...] = ()


def fill_cap(limit: int, fill: float) -> int:
    """The hits a counter may hold when a decision may fill only `fill` of its limit."""
    return limit if fill >= 1.0 else int(limit * fill)


def charge_fits(charge: Charge, used: int, fill: float = 1.0) -> bool:
    return used + charge.hits <= fill_cap(charge.limit.requests_per_unit, fill)


def enforced(charge: Charge) -> bool:
    return not charge.limit.shadow_mode


def judge(
    n_descriptors: int, charges: Sequence[Charge], outcomes: Sequence[ChargeOutcome], admitted: bool
) -> list[DescriptorVerdict]:
    """Verdict per descriptor from each charge's outcome and whether the request was admitted."""
    per: list[list[tuple[Charge, ChargeOutcome]]] = [[] for _ in range(n_descriptors)]
    for charge, outcome in zip(charges, outcomes, strict=True):
        per[charge.descriptor].append((charge, outcome))
    verdicts = []
    for pairs in per:
        if not pairs:
            verdicts.append(DescriptorVerdict(False, None, 0, 0))
            continue
        matched = tuple(c.limit for c, _ in pairs)
        refusing = [(c, o) for c, o in pairs if enforced(c) and not charge_fits(c, o.used)]
        shadow_over = any(not enforced(c) and not charge_fits(c, o.used) for c, o in pairs)
        if refusing:
            charge, outcome = max(refusing, key=lambda p: p[1].wait_ms)
            remaining = max(0, charge.limit.requests_per_unit - outcome.used)
            verdicts.append(DescriptorVerdict(True, charge.limit, remaining, outcome.wait_ms, shadow_over, matched))
            continue

        def left(pair: tuple[Charge, ChargeOutcome]) -> int:
            c, o = pair
            return c.limit.requests_per_unit - o.used - (c.hits if admitted else 0)

        charge, outcome = min(pairs, key=left)
        verdicts.append(
            DescriptorVerdict(
                False, charge.limit, max(0, left((charge, outcome))), outcome.clear_ms, shadow_over, matched
            )
        )
    return verdicts
