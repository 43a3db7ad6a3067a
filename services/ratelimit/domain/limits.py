"""Rate-limit config and the fixed-window decision. Pure: no I/O, time passed in.

Config follows Envoy's rate limit service: a domain holds a tree of descriptors; each node
matches one entry by key and, optionally, value; a node with a value beats the generic
node of the same key. The limit of the deepest node matching the whole descriptor applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class LimitUnit(Enum):
    SECOND = 1
    MINUTE = 60
    HOUR = 3600
    DAY = 86400

    @property
    def seconds(self) -> int:
        return self.value


class LimitConfigError(ValueError):
    """The limits file is not valid; the message names the path of the bad value."""


@dataclass(frozen=True, slots=True)
class Limit:
    name: str
    requests_per_unit: int
    unit: LimitUnit


@dataclass(frozen=True, slots=True)
class DescriptorNode:
    key: str
    value: str | None
    limit: Limit | None
    children: tuple[DescriptorNode, ...] = ()


@dataclass(frozen=True, slots=True)
class LimitConfig:
    """Immutable parsed config: domain -> descriptor trees."""

    domains: Mapping[str, tuple[DescriptorNode, ...]] = field(default_factory=dict)

    def find(self, domain: str, entries: Sequence[tuple[str, str]]) -> Limit | None:
        nodes = self.domains.get(domain, ())
        limit: Limit | None = None
        for key, value in entries:
            exact = next((n for n in nodes if n.key == key and n.value == value), None)
            node = exact or next((n for n in nodes if n.key == key and n.value is None), None)
            if node is None:
                return None
            limit = node.limit
            nodes = node.children
        return limit


def parse_limit_config(docs: Sequence[Mapping[str, Any]]) -> LimitConfig:
    """Parse one mapping per domain: {domain, descriptors: [{key, value?, rate_limit?, descriptors?}]}."""
    domains: dict[str, tuple[DescriptorNode, ...]] = {}
    for i, doc in enumerate(docs):
        domain = doc.get("domain")
        if not isinstance(domain, str) or not domain:
            raise LimitConfigError(f"[{i}].domain: must be a non-empty string")
        if domain in domains:
            raise LimitConfigError(f"[{i}].domain: {domain!r} appears twice")
        domains[domain] = _nodes(doc.get("descriptors") or [], f"{domain}.descriptors")
    return LimitConfig(domains)


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
        limit = None
        if "rate_limit" in item:
            rl = item["rate_limit"]
            if not isinstance(rl, dict):
                raise LimitConfigError(f"{where}.rate_limit: must be a mapping")
            rpu = rl.get("requests_per_unit")
            if not isinstance(rpu, int) or isinstance(rpu, bool) or rpu < 0:
                raise LimitConfigError(f"{where}.rate_limit.requests_per_unit: must be an integer >= 0")
            try:
                unit = LimitUnit[str(rl.get("unit", "")).upper()]
            except KeyError:
                raise LimitConfigError(f"{where}.rate_limit.unit: must be second, minute, hour or day") from None
            name = str(rl.get("name") or f"{item['key']}{'=' + value if value else ''}")
            limit = Limit(name, rpu, unit)
        out.append(
            DescriptorNode(item["key"], value, limit, _nodes(item.get("descriptors") or [], f"{where}.descriptors"))
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class HitRequest:
    """One descriptor to charge."""

    entries: tuple[tuple[str, str], ...]
    hits: int


@dataclass(frozen=True, slots=True)
class WindowCharge:
    """A counter to bump if every descriptor fits: its key, window and limit."""

    counter_key: str
    limit: Limit
    window_start: int
    hits: int


@dataclass(frozen=True, slots=True)
class DescriptorVerdict:
    over_limit: bool
    limit: Limit | None
    remaining: int
    reset_in_ms: int


def plan_charges(
    config: LimitConfig, domain: str, requests: Sequence[HitRequest], now: float
) -> list[WindowCharge | None]:
    """The counter each descriptor charges in the current window (None: no limit applies)."""
    out: list[WindowCharge | None] = []
    for req in requests:
        limit = config.find(domain, req.entries)
        if limit is None:
            out.append(None)
            continue
        window = int(now) // limit.unit.seconds * limit.unit.seconds
        key = "|".join([domain, *(f"{k}={v}" for k, v in req.entries), limit.unit.name, str(window)])
        out.append(WindowCharge(key, limit, window, req.hits))
    return out


def judge(charges: Sequence[WindowCharge | None], counts_before: Sequence[int], now: float) -> list[DescriptorVerdict]:
    """Verdict per descriptor, given each counter's value before this request."""
    verdicts = []
    for charge, before in zip(charges, counts_before, strict=True):
        if charge is None:
            verdicts.append(DescriptorVerdict(False, None, 0, 0))
            continue
        reset_ms = int((charge.window_start + charge.limit.unit.seconds - now) * 1000)
        after = before + charge.hits
        over = after > charge.limit.requests_per_unit
        remaining = charge.limit.requests_per_unit - (before if over else after)
        verdicts.append(DescriptorVerdict(over, charge.limit, max(0, remaining), max(0, reset_ms)))
    return verdicts
