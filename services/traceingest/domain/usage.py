"""Usage events as trace-ingest stores them, and the cost queries it answers."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from interlock.errors import InvalidArgumentError


@dataclass(frozen=True)
class UsageRecord:
    """One settled model call, one row of `usage_events`."""

    event_id: str
    org: str
    project: str
    developer: str
    api_key_id: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_nanos: int
    status: str
    occurred_at_ms: int
    """Unix time in milliseconds (the column is DateTime64(3))."""
    trace_id: str
    run_id: str
    agent: str

    def problems(self) -> list[str]:
        """Why this record cannot be stored (it would collapse with others or corrupt sums)."""
        found = []
        if not self.event_id:
            found.append("event_id is empty")
        for name in ("input_tokens", "output_tokens", "cost_nanos"):
            if getattr(self, name) < 0:
                found.append(f"{name} is negative")
        return found


class Dimension(enum.Enum):
    """A dimension usage may be grouped by; the value is its `usage_events` column."""

    ORG = "org"
    PROJECT = "project"
    DEVELOPER = "developer"
    PROVIDER = "provider"
    MODEL = "model"
    AGENT = "agent"
    RUN_ID = "run_id"

    @property
    def column(self) -> str:
        return self.value


ALLOWED_DIMENSIONS = tuple(d.value for d in Dimension)


@dataclass(frozen=True)
class CostQuery:
    """A validated QueryCosts request."""

    group_by: tuple[Dimension, ...]
    since: datetime | None
    """Only usage at or after this instant (timezone-aware); None means all."""
    org: str
    """Only this org; empty means all orgs."""
    project: str
    """Only this project; empty means all projects."""

    @classmethod
    def parse(cls, group_by: Sequence[str], since: datetime | None, org: str, project: str) -> CostQuery:
        """Check the request against the allow-list; raise InvalidArgumentError naming the field."""
        dims: list[Dimension] = []
        for index, name in enumerate(group_by):
            try:
                dim = Dimension(name)
            except ValueError:
                raise InvalidArgumentError(
                    f"unknown dimension {name[:64]!r}; allowed: {', '.join(ALLOWED_DIMENSIONS)}",
                    field="group_by",
                    metadata={"index": str(index)},
                ) from None
            if dim in dims:
                raise InvalidArgumentError(f"dimension {name!r} is repeated", field="group_by")
            dims.append(dim)
        if since is not None and since.tzinfo is None:
            raise InvalidArgumentError("must carry a time zone", field="since")
        return cls(group_by=tuple(dims), since=since, org=org, project=project)


@dataclass(frozen=True)
class CostRow:
    """Sums for one group, `keys` in the order of the query's `group_by`."""

    keys: tuple[str, ...]
    requests: int
    input_tokens: int
    output_tokens: int
    cost_nanos: int
