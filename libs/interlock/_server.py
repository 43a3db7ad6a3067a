"""The gRPC server kit every Interlock service runs on.

It gives each service grpc.aio with the standard health and reflection services, requests
parsed with field-naming errors, one mapping from `InterlockError` to gRPC status with
details, a SERVER span per call (interlock._rpc_tracing), and a graceful stop on
SIGTERM/SIGINT: health turns NOT_SERVING, new calls are refused, in-flight calls get
`grace_s` to finish, then the service's own cleanup runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import uvloop
from google.protobuf import message as pb_message
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from opentelemetry.trace import Span

from interlock._grpc_loop import LoopGrpcServer
from interlock._idle import for_each_thread, installed_guard
from interlock._rpc_tracing import ServerSpan, record_server_code
from interlock._settings import SettingsError
from interlock._wire import parse_request
from interlock.errors import ErrorCode, InterlockError, to_status

log = logging.getLogger("interlock.server")

# A 10 MB prompt must reach validation (and get INVALID_ARGUMENT naming the field)
# rather than be cut by gRPC's 4 MB default with RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
)
"""Every service's gRPC server options (`bench.floor` serves its bare gRPC proxy with them)."""

T = TypeVar("T")

UnaryImpl = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[pb_message.Message]]
StreamImpl = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[pb_message.Message]]


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a service process's main coroutine to its end on uvloop.

    uvloop's libuv loop schedules callbacks and socket I/O (the HTTP facade, provider
    connections) with a fraction of the standard loop's per-event overhead; grpc.aio runs on
    any asyncio loop, so nothing else changes.
    """
    return uvloop.run(main)


def set_cpu_priority(nice: int, setting: str) -> None:
    """Give this process the scheduling niceness `nice` (-20 to 19, from the variable
    `setting`; 0, the default, leaves it alone). Called first thing in a service's main, so
    every thread it starts inherits it.

    On a host the mesh shares (`interlock up`, the benchmarks), the services off the call
    path (budget commits, trace and usage ingest) at a higher niceness than the router give
    way to it whenever both want a core: a call then waits less for the CPU. Their work is
    only delayed, never dropped. Under Kubernetes, CPU requests do this between pods."""
    if not -20 <= nice <= 19:
        raise SettingsError(f"{setting}={nice}: niceness is not between -20 and 19")
    if nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def parse_cpu_list(text: str, setting: str) -> frozenset[int]:
    """CPU numbers from Linux's list format (as `taskset -c` and cpusets write them: `1`,
    `0-3`, `0,2-3`); a malformed list fails with the variable's name."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise SettingsError(f"{setting}={text!r}: not a CPU list such as 1, 0-3 or 0,2-3") from None
        if low < 0 or high < low:
            raise SettingsError(f"{setting}={text!r}: not a CPU list such as 1, 0-3 or 0,2-3")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def set_cpu_affinity(cpus: str, setting: str) -> None:
    """Bind every thread of this process to the CPUs listed in `cpus` (from the variable
    `setting`; empty, the default, leaves placement to the kernel's scheduler). Called first
    thing in a service's main; threads started later inherit it.

    A gRPC call to a Python service passes between two threads several times: gRPC core's
    completion-queue poller takes each event of the call (its arrival, each message sent,
    its close) and wakes the event loop's thread, which answers by waking the poller again.
    When the two run on different CPUs, each of those wake-ups may have to bring an idle CPU
    back first, which on a virtual machine costs tens of microseconds or more; on one CPU it
    is a switch between threads. The price: the process cannot move to another CPU when its
    own is busy, so the CPUs given should be ones it does not share with much else (a
    Kubernetes pod's exclusive cores under the static CPU manager policy). CPUs outside the
    process's allowed set fail the start with the variable's name."""
    if not cpus.strip():
        return
    wanted = parse_cpu_list(cpus, setting)
    allowed = os.sched_getaffinity(0)
    if not wanted <= allowed:
        outside = ",".join(str(cpu) for cpu in sorted(wanted - allowed))
        raise SettingsError(
            f"{setting}={cpus!r}: CPU {outside} not among this process's allowed CPUs "
            f"({','.join(str(cpu) for cpu in sorted(allowed))})"
        )
    for_each_thread(lambda tid: os.sched_setaffinity(tid, wanted))


GRPC_EXPERIMENTS = "-event_engine_listener,-event_engine_for_all_other_endpoints,-event_engine_client"
"""The services' default for gRPC core's own `GRPC_EXPERIMENTS` variable, set in their
environment by whatever starts them (`interlock up` and the test and benchmark meshes in
interlock.mesh, the images' Dockerfile); a value the operator sets wins. gRPC reads it once,
when grpc is imported, so it cannot be set from inside a service.

It turns gRPC core's EventEngine off for the listener, the client channels and other
endpoints, which brings back its poller-based I/O: a call's bytes are read by the thread
that polls the completion queue instead of being handed to it by an EventEngine worker
first. On the router's gRPC path this took its CPU per call at 1,000 calls/s from 0.77 to
0.71 ms (docs/BENCHMARKS.md). tests/unit/test_grpc_core_defaults.py checks that the gRPC
installed knows every name in it."""


GC_GEN0_THRESHOLD = 20_000
"""Allocations between two young-generation collections once serving (Python's default is
700). A call allocates a few thousand objects that reference counting frees at its end; at
700 the collector runs several times a call and walks the live ones each time. At 1,000
calls/s, 20,000 took the mesh's p99 from 47 to 26 ms; at 100/s no difference showed
(`make bench-probe`, docs/BENCHMARKS.md). `INTERLOCK_GC_GEN0_THRESHOLD` sets it for every
service."""


def gc_gen0_threshold(environ: Mapping[str, str] | None = None) -> int:
    """`INTERLOCK_GC_GEN0_THRESHOLD` or the default; raises SettingsError for a bad value."""
    raw = (os.environ if environ is None else environ).get("INTERLOCK_GC_GEN0_THRESHOLD", "")
    if not raw:
        return GC_GEN0_THRESHOLD
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise SettingsError(f"INTERLOCK_GC_GEN0_THRESHOLD={raw!r} is not a positive integer")
    return value


def freeze_startup_heap(gen0_threshold: int = GC_GEN0_THRESHOLD) -> None:
    """Put what starting the service allocated (modules, protobuf descriptors, pricing tables,
    config) out of the cycle collector's reach, and collect the young generation every
    `gen0_threshold` allocations. A full collection otherwise walks all of the startup heap
    (12-18 ms for the router's imports alone) and stalls whatever calls are in flight at
    that moment; after this it walks only what serving allocates."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(gen0_threshold, *gc.get_threshold()[1:])


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: InterlockError) -> None:
    """End the call with the gRPC status for `error` (raises grpc.aio.AbortError)."""
    await context.abort_with_status(rpc_status.to_status(to_status(error)))


def _internal(method: str, exc: BaseException) -> InterlockError:
    # The message stays generic: exception text may carry upstream secrets or payloads.
    log.error("unhandled error", exc_info=exc, extra={"fields": {"method": method}})
    return InterlockError("internal error", code=ErrorCode.INTERNAL)


async def _failed(method: str, span: Span, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    """Record on its SERVER span how a served call failed, and end the call with the gRPC
    status for the failure (an InterlockError's, INTERNAL for any other exception; raising
    grpc.aio.AbortError then). The handler re-raises `exc` after."""
    if isinstance(exc, InterlockError):
        record_server_code(span, exc.code.grpc_code, exc.message)
        await abort_with(context, exc)
    elif isinstance(exc, grpc.aio.AbortError):
        record_server_code(span, _aborted_code(context))
    elif isinstance(exc, asyncio.CancelledError):
        record_server_code(span, grpc.StatusCode.CANCELLED)
        if not context.cancelled():
            # Not the caller's doing (it hung up or hit its deadline): say where it came from.
            log.warning("call cancelled inside the service", exc_info=exc, extra={"fields": {"method": method}})
    elif isinstance(exc, Exception):
        record_server_code(span, grpc.StatusCode.INTERNAL)
        await abort_with(context, _internal(method, exc))


def _unary(method: str, cls: type[pb_message.Message], impl: UnaryImpl) -> grpc.RpcMethodHandler[Any, Any]:
    path = _rpc_path(method)

    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        # The span and the failure handling written out, not an async context manager: this
        # runs for every call, and a generator-based manager costs several more frames each.
        with ServerSpan(path, context.invocation_metadata()) as span:
            try:
                answer = (await impl(parse_request(cls, raw), context)).SerializeToString()
            except (Exception, asyncio.CancelledError) as exc:
                await _failed(method, span, context, exc)
                raise
            record_server_code(span, grpc.StatusCode.OK)
            return answer

    return grpc.unary_unary_rpc_method_handler(handle)


def _stream(method: str, cls: type[pb_message.Message], impl: StreamImpl) -> grpc.RpcMethodHandler[Any, Any]:
    path = _rpc_path(method)

    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        with ServerSpan(path, context.invocation_metadata()) as span:
            try:
                async for item in impl(parse_request(cls, raw), context):
                    yield item.SerializeToString()
            except (Exception, asyncio.CancelledError) as exc:
                await _failed(method, span, context, exc)
                raise
            record_server_code(span, grpc.StatusCode.OK)

    return grpc.unary_stream_rpc_method_handler(handle)


def _rpc_path(full_name: str) -> str:
    """`/package.Service/Method`, as gRPC names a call on the wire, from `package.Service.Method`."""
    service, _, name = full_name.rpartition(".")
    return f"/{service}/{name}"


def _aborted_code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object) -> None:
    """Serve every method of `service` from the same-named coroutine of `servicer`.

    Methods take the parsed request message and the context; unary ones return a message,
    server-streaming ones are async generators. Raising InterlockError sets the status.
    """
    handlers = service_handlers(service, servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def service_handlers(service: ServiceDescriptor, servicer: object) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The kit's handler of every method of `service` (by method name), as `add_service` serves them."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        if method.client_streaming:
            raise ValueError(f"{method.full_name}: client streaming is not supported by the kit")
        cls = message_factory.GetMessageClass(method.input_type)
        impl = getattr(servicer, method.name)
        make = _stream if method.server_streaming else _unary
        handlers[method.name] = make(method.full_name, cls, impl)
    return handlers


@dataclass
class GrpcService:
    """A service process: its gRPC server plus hooks to start and stop its resources."""

    name: str
    """Service name for health (`interlock.router.v1.RouterService`) and logs."""
    host: str
    port: int
    services: Sequence[tuple[ServiceDescriptor, object]]
    """(descriptor, servicer) pairs served by the kit."""
    extra_registrations: Sequence[Callable[[grpc.aio.Server], None]] = ()
    """Servicers registered by their own generated code (e.g. OTLP TraceService)."""
    on_start: Sequence[Callable[[], Awaitable[None]]] = ()
    on_draining: Sequence[Callable[[], Awaitable[None]]] = ()
    """Run when a stop begins, alongside the gRPC drain (e.g. stop an HTTP facade gracefully)."""
    on_stop: Sequence[Callable[[], Awaitable[None]]] = ()
    """Run after in-flight calls finished: close clients and stores."""
    grace_s: float = 10.0
    """How long in-flight calls may run after a stop signal."""
    loop_port: int = -1
    """A second port serving `services` (not health, reflection or `extra_registrations`) on
    the event-loop transport, interlock._grpc_loop; 0 picks a free one, -1 (the default) none."""
    bound_port: int = field(default=0, init=False)
    loop_bound_port: int = field(default=0, init=False)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set or SIGTERM/SIGINT arrives, then stop gracefully."""
        stop = stop or asyncio.Event()
        gen0_threshold = gc_gen0_threshold()  # a bad value fails the start, not the serving
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Not possible off the main thread (in-process tests); the stop event still works.
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        for hook in self.on_start:
            await hook()
        server = grpc.aio.server(options=SERVER_OPTIONS)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names = [reflection.SERVICE_NAME, health.SERVICE_NAME]
        for descriptor, servicer in self.services:
            add_service(server, descriptor, servicer)
            names.append(descriptor.full_name)
        for register in self.extra_registrations:
            register(server)
        reflection.enable_server_reflection(names, server)
        self.bound_port = server.add_insecure_port(f"{self.host}:{self.port}")
        if self.bound_port == 0:
            raise RuntimeError(f"{self.name}: cannot listen on {self.host}:{self.port}")
        await server.start()
        loop_server = None
        if self.loop_port >= 0:
            paths = {
                _rpc_path(f"{descriptor.full_name}.{name}"): handler
                for descriptor, servicer in self.services
                for name, handler in service_handlers(descriptor, servicer).items()
            }
            loop_server = LoopGrpcServer(paths, MAX_MESSAGE_BYTES)
            self.loop_bound_port = await loop_server.start(self.host, self.loop_port)
            address = f"{self.host}:{self.loop_bound_port}"
            log.info("serving on the event-loop transport", extra={"fields": {"address": address}})
        for name in ("", *(d.full_name for d, _ in self.services)):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        freeze_startup_heap(gen0_threshold)
        idle_guard = installed_guard()
        if idle_guard is not None:
            idle_guard.start()
        log.info("serving", extra={"fields": {"address": f"{self.host}:{self.bound_port}"}})
        try:
            await stop.wait()
        finally:
            if idle_guard is not None:
                idle_guard.stop()
            log.info("stopping", extra={"fields": {"grace_s": self.grace_s}})
            await health_servicer.enter_graceful_shutdown()
            stopping = [server.stop(self.grace_s), *(hook() for hook in self.on_draining)]
            if loop_server is not None:
                stopping.append(loop_server.stop(self.grace_s))
            await asyncio.gather(*stopping)
            for hook in self.on_stop:
                try:
                    await hook()
                except Exception:
                    log.exception("cleanup failed")
            log.info("stopped")
