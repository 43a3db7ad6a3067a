"""Interlock: an orchestration mesh for multi-agent AI applications.

The public API is what this module exports: the router clients and the error types.
"""

from interlock.client import AsyncClient, ChatResult, Client, StreamDelta, Usage
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

__all__ = [
    "AsyncClient",
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
    "StreamDelta",
    "UnavailableError",
    "UpstreamError",
    "Usage",
]
