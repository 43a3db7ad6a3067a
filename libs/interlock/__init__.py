"""Interlock: an orchestration mesh for multi-agent AI applications.

The public API is what this module exports: the router clients, agent runs and their
replay, and the error types.
"""

from interlock.client import AsyncClient, ChatResult, Client, StreamDelta, ToolCall, Usage
from interlock.errors import (
    AuthenticationError,
    BudgetExceededError,
    DeadlineExceededError,
    ErrorCode,
    FailedPreconditionError,
    InterlockError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    UnavailableError,
    UpstreamError,
)
from interlock.replay import AsyncReplayClient, RecordedCall, Recording, ReplayClient, ReplayDivergenceError
from interlock.runs import Run, RunScope, client_tracer_provider

__all__ = [
    "AsyncClient",
    "AsyncReplayClient",
    "AuthenticationError",
    "BudgetExceededError",
    "ChatResult",
    "Client",
    "DeadlineExceededError",
    "ErrorCode",
    "FailedPreconditionError",
    "InterlockError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RecordedCall",
    "Recording",
    "ReplayClient",
    "ReplayDivergenceError",
    "Run",
    "RunScope",
    "StreamDelta",
    "ToolCall",
    "UnavailableError",
    "UpstreamError",
    "Usage",
    "client_tracer_provider",
]
