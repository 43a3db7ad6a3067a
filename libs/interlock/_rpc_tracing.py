"""Spans and trace propagation for the mesh's own gRPC hops, without interceptors.

The OpenTelemetry gRPC instrumentation wraps every call in interceptor layers (a proxy
around the servicer context, interceptor call objects on the client) whose cost is paid by
every call, sampled or not; on the router's hot path that was a tenth of its CPU. Here the
server kit (`interlock._server`) and the router's mesh clients start the same spans
themselves: `/package.Service/Method`, kind SERVER or CLIENT, `rpc.system`, `rpc.service`,
`rpc.method` and `rpc.grpc.status_code`, parented by the W3C `traceparent` the caller put in
the call's metadata. A call whose trace is not sampled costs a non-recording span and the
header, nothing more.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, StatusCode

_tracer = trace.get_tracer("interlock.rpc")
_CARRIER_KEYS = frozenset(("traceparent", "tracestate", "baggage"))


@functools.cache
def _attributes(path: str) -> Mapping[str, str]:
    """A method's span attributes, built once (the spans copy what they keep)."""
    service, _, method = path.lstrip("/").rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


def _record_code(span: Span, code: grpc.StatusCode, details: str = "") -> None:
    if not span.is_recording():
        return
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code != grpc.StatusCode.OK:
        span.set_status(StatusCode.ERROR, f"{code.name}: {details}" if details else code.name)


class ServerSpan:
    """The SERVER span of one call, current while the handler runs; parented by the caller's
    `traceparent` when the metadata carries one. The caller records the outcome.

    A class rather than a generator context manager (and no `trace.use_span`, a second one):
    the kit opens one for every call it serves, sampled or not."""

    __slots__ = ("_metadata", "_path", "_span", "_token")

    def __init__(self, path: str, invocation_metadata: Any) -> None:
        self._path = path
        self._metadata = invocation_metadata

    def __enter__(self) -> Span:
        carrier: dict[str, str] | None = None
        for key, value in self._metadata or ():
            if key in _CARRIER_KEYS and isinstance(value, str):
                carrier = carrier or {}
                carrier[key] = value
        parent = propagate.extract(carrier) if carrier else otel_context.Context()
        path = self._path
        self._span = _tracer.start_span(path, context=parent, kind=SpanKind.SERVER, attributes=_attributes(path))
        self._token = otel_context.attach(trace.set_span_in_context(self._span, parent))
        return self._span

    def __exit__(self, *exc_info: object) -> None:
        otel_context.detach(self._token)
        self._span.end()


def record_server_code(span: Span, code: grpc.StatusCode, details: str = "") -> None:
    """Record how a served call ended (OK or the status it was aborted with)."""
    _record_code(span, code, details)


async def traced_call(
    method: Callable[..., Any],
    path: str,
    request: Any,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - gRPC's own deadline
) -> Any:
    """Call a unary stub `method` (full name `path`) under a CLIENT span, with the trace
    context in the call's metadata so the server's span joins the caller's trace."""
    span = _tracer.start_span(path, kind=SpanKind.CLIENT, attributes=_attributes(path))
    with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        try:
            response = await method(request, timeout=timeout, metadata=tuple(carrier.items()))
        except grpc.aio.AioRpcError as exc:
            _record_code(span, exc.code(), exc.details() or "")
            raise
        _record_code(span, grpc.StatusCode.OK)
        return response
