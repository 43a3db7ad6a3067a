"""One error type for all of Interlock, carrying a code, and its gRPC status mapping.

Services raise `InterlockError` (or a subclass) from domain code; the server kit turns it
into a gRPC status with structured details (ErrorInfo, BadRequest, QuotaFailure,
RetryInfo); the client turns such a status back into the same typed exception.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "interlock.dev"


class ErrorCode(enum.Enum):
    """What went wrong, as the caller should act on it."""

    INVALID_ARGUMENT = ("invalid_argument", grpc.StatusCode.INVALID_ARGUMENT)
    UNAUTHENTICATED = ("unauthenticated", grpc.StatusCode.UNAUTHENTICATED)
    PERMISSION_DENIED = ("permission_denied", grpc.StatusCode.PERMISSION_DENIED)
    NOT_FOUND = ("not_found", grpc.StatusCode.NOT_FOUND)
    FAILED_PRECONDITION = ("failed_precondition", grpc.StatusCode.FAILED_PRECONDITION)
    RATE_LIMITED = ("rate_limited", grpc.StatusCode.RESOURCE_EXHAUSTED)
    BUDGET_EXCEEDED = ("budget_exceeded", grpc.StatusCode.RESOURCE_EXHAUSTED)
    UPSTREAM_FAILED = ("upstream_failed", grpc.StatusCode.UNAVAILABLE)
    UNAVAILABLE = ("unavailable", grpc.StatusCode.UNAVAILABLE)
    DEADLINE_EXCEEDED = ("deadline_exceeded", grpc.StatusCode.DEADLINE_EXCEEDED)
    INTERNAL = ("internal", grpc.StatusCode.INTERNAL)

    @property
    def reason(self) -> str:
        """Stable machine-readable reason, sent as google.rpc.ErrorInfo.reason."""
        return self.value[0]

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return self.value[1]


class InterlockError(Exception):
    """An Interlock call failed. `code` says why; the other fields add detail."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        field: str | None = None,
        retry_after_s: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.field = field
        """For INVALID_ARGUMENT: the request field at fault, e.g. `params.messages`."""
        self.retry_after_s = retry_after_s
        """For RATE_LIMITED and transient errors: when a retry may succeed."""
        self.metadata: dict[str, str] = dict(metadata or {})
        """Extra structured detail (scope, provider, limit name, ...)."""

    def __str__(self) -> str:
        where = f" [{self.field}]" if self.field else ""
        return f"{self.code.reason}{where}: {self.message}"


class InvalidArgumentError(InterlockError):
    """The request is malformed; `field` names the offending field."""

    code = ErrorCode.INVALID_ARGUMENT


class AuthenticationError(InterlockError):
    """The API key is missing or not valid."""

    code = ErrorCode.UNAUTHENTICATED


class PermissionDeniedError(InterlockError):
    """The caller may not touch this resource."""

    code = ErrorCode.PERMISSION_DENIED


class NotFoundError(InterlockError):
    """The named resource does not exist."""

    code = ErrorCode.NOT_FOUND


class FailedPreconditionError(InterlockError):
    """The request conflicts with the current state (e.g. a released request id reused)."""

    code = ErrorCode.FAILED_PRECONDITION


class RateLimitedError(InterlockError):
    """A rate limit refused the call; retry after `retry_after_s`."""

    code = ErrorCode.RATE_LIMITED


class BudgetExceededError(InterlockError):
    """The call's worst-case cost does not fit in a budget; `metadata["scope"]` says which."""

    code = ErrorCode.BUDGET_EXCEEDED


class UpstreamError(InterlockError):
    """Every provider that could serve the call failed."""

    code = ErrorCode.UPSTREAM_FAILED


class UnavailableError(InterlockError):
    """An Interlock service or its dependency is down; retrying later may succeed."""

    code = ErrorCode.UNAVAILABLE


class DeadlineExceededError(InterlockError):
    """The call ran out of time."""

    code = ErrorCode.DEADLINE_EXCEEDED


_BY_REASON: dict[str, type[InterlockError]] = {
    cls.code.reason: cls
    for cls in (
        InvalidArgumentError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        FailedPreconditionError,
        RateLimitedError,
        BudgetExceededError,
        UpstreamError,
        UnavailableError,
        DeadlineExceededError,
    )
}
_BY_GRPC_CODE: dict[grpc.StatusCode, type[InterlockError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimitedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


def to_status(error: InterlockError) -> status_pb2.Status:
    """The google.rpc.Status for an error, with every detail it carries."""
    status = status_pb2.Status(code=error.code.grpc_code.value[0], message=error.message)
    info = error_details_pb2.ErrorInfo(reason=error.code.reason, domain=ERROR_DOMAIN)
    info.metadata.update(error.metadata)
    status.details.add().Pack(info)
    if error.field is not None:
        bad = error_details_pb2.BadRequest()
        bad.field_violations.add(field=error.field, description=error.message)
        status.details.add().Pack(bad)
    if error.code in (ErrorCode.RATE_LIMITED, ErrorCode.BUDGET_EXCEEDED):
        quota = error_details_pb2.QuotaFailure()
        quota.violations.add(subject=error.metadata.get("scope", ""), description=error.message)
        status.details.add().Pack(quota)
    if error.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(0, int(error.retry_after_s * 1000)))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


def from_status(status: status_pb2.Status) -> InterlockError:
    """The typed error for a google.rpc.Status (the inverse of `to_status`)."""
    reason = ""
    field: str | None = None
    retry_after: float | None = None
    metadata: dict[str, str] = {}
    for any_detail in status.details:
        if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_detail.Unpack(info)
            reason = info.reason
            metadata.update(info.metadata)
        elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_detail.Unpack(bad)
            if bad.field_violations:
                field = bad.field_violations[0].field
        elif any_detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            any_detail.Unpack(retry)
            retry_after = retry.retry_delay.ToMilliseconds() / 1000
    grpc_code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.UNKNOWN)
    cls = _BY_REASON.get(reason) or _BY_GRPC_CODE.get(grpc_code, InterlockError)
    code = None if cls is not InterlockError else _code_for(grpc_code)
    return cls(status.message, code=code, field=field, retry_after_s=retry_after, metadata=metadata)


def _code_for(grpc_code: grpc.StatusCode) -> ErrorCode:
    for code in ErrorCode:
        if code.grpc_code == grpc_code:
            return code
    return ErrorCode.INTERNAL


def from_rpc_error(error: grpc.RpcError) -> InterlockError:
    """The typed error for a failed gRPC call (client side)."""
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    if status is None:
        code: grpc.StatusCode = error.code()
        status = status_pb2.Status(code=code.value[0], message=error.details() or "")
    return from_status(status)


__all__ = [
    "AuthenticationError",
    "BudgetExceededError",
    "DeadlineExceededError",
    "ErrorCode",
    "FailedPreconditionError",
    "InterlockError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "UnavailableError",
    "UpstreamError",
    "from_rpc_error",
    "from_status",
    "to_status",
]
