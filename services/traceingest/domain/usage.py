"""Usage events as trace-ingest stores them, and the cost queries it answers."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from interlock.errors import InvalidArgumentError, PermissionDeniedError

MAX_SCHEMA_VERSION = 2
"""Newest UsageEvent layout this trace-ingest understands (2 added cache, reasoning, latency...)."""


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
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    config_version: str = ""
    latency_ms: int = 0
    attempt: int = 0
    schema_version: int = 1
    provider_attempts: int = 0
    request_id: str = ""

    def problems(self) -> list[str]:
        """Why this record cannot be stored (it would collapse with others or corrupt sums)."""
        found = []
        if not self.event_id:
            found.append("event_id is empty")
        if not self.org or not self.project:
            found.append("org and project must be set")
        for name in (
            "input_tokens",
            "output_tokens",
            "cost_nanos",
            "cached_input_tokens",
            "reasoning_tokens",
            "cache_write_tokens",
            "latency_ms",
        ):
            if getattr(self, name) < 0:
                found.append(f"{name} is negative")
        if 0 <= self.input_tokens < self.cached_input_tokens:
            found.append("cached_input_tokens exceeds input_tokens")
        if self.schema_version > MAX_SCHEMA_VERSION:
            # A newer producer: its fields may change meaning; park it rather than misread it.
            found.append(f"schema_version {self.schema_version} is newer than {MAX_SCHEMA_VERSION}")
        return found


class Dimension(enum.Enum):
    """A dimension usage may be grouped by; the value is its name in QueryCosts."""

    ORG = "org"
    PROJECT = "project"
    DEVELOPER = "developer"
    PROVIDER = "provider"
    MODEL = "model"
    AGENT = "agent"
    RUN_ID = "run_id"
    DAY = "day"
    HOUR = "hour"

    @property
    def in_rollups(self) -> bool:
        """Whether the hourly rollup can answer it (run ids are too many to roll up)."""
        return self is not Dimension.RUN_ID


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
    limit: int = 0
    """Most rows (top N by cost); 0 means the store's maximum."""
    until: datetime | None = None
    """Only usage before this instant; None means up to now."""
    repriced: bool = False
    """Costs from the newest `interlock costs reprice` where one exists, else as billed."""

    @classmethod
    def parse(
        cls,
        group_by: Sequence[str],
        since: datetime | None,
        org: str,
        project: str,
        *,
        limit: int = 0,
        until: datetime | None = None,
        repriced: bool = False,
    ) -> CostQuery:
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
        if until is not None and until.tzinfo is None:
            raise InvalidArgumentError("must carry a time zone", field="until")
        if since is not None and until is not None and until <= since:
            raise InvalidArgumentError("must be after since", field="until")
        if limit < 0:
            raise InvalidArgumentError("must not be negative", field="limit")
        return cls(
            group_by=tuple(dims), since=since, org=org, project=project, limit=limit, until=until, repriced=repriced
        )

    def scoped_to(self, org: str, project: str) -> CostQuery:
        """This query limited to one tenant's project; PermissionDeniedError if it asked for another."""
        if (self.org and self.org != org) or (self.project and self.project != project):
            raise PermissionDeniedError(
                "an API key may read only its own project's costs",
                metadata={"field": "project" if self.project and self.project != project else "org"},
            )
        return replace(self, org=org, project=project)


@dataclass(frozen=True)
class CostRow:
    """Sums for one group, `keys` in the order of the query's `group_by`."""

    keys: tuple[str, ...]
    requests: int
    input_tokens: int
    output_tokens: int
    cost_nanos: int
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
