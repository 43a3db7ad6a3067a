"""Agent runs as one trace: run > agent > step > LLM call, plus the tool calls agents make.

    provider = interlock.client_tracer_provider("127.0.0.1:50054")   # OTLP to trace-ingest
    with interlock.Run("run-42", tracer_provider=provider) as run:
        with run.agent("planner"), run.step("plan"):
            answer = client.chat(model="gpt-4o-mini", messages=[...], max_tokens=64)
        with run.agent("researcher"), run.step("search"):
            with run.tool("web_search", call_id=call.id) as tool:
                tool.set_attribute("interlock.tool.result_chars", len(result))

Spans follow the OpenTelemetry GenAI conventions (`invoke_agent {name}`, `execute_tool
{name}`, `gen_ai.agent.name`, `gen_ai.tool.name`). Calls made in a scope carry its run id,
agent and step to the router, whose spans become children of the call's span. Scopes
live in context variables, so concurrent asyncio agents each keep their own.
"""

from __future__ import annotations

import contextlib
import contextvars
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from types import TracebackType

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_TRACER_NAME = "interlock.client"


@dataclass(frozen=True)
class RunScope:
    """Where a call is made: which run, agent and step."""

    run: Run
    agent: str = ""
    step: str = ""


_scope: contextvars.ContextVar[RunScope | None] = contextvars.ContextVar("interlock_run_scope", default=None)


def current_scope() -> RunScope | None:
    """The innermost run scope of the calling code, or None outside any run."""
    return _scope.get()


def client_tracer_provider(otlp_endpoint: str, service_name: str = "interlock-client") -> TracerProvider:
    """A tracer provider exporting over OTLP/gRPC (to trace-ingest), for `Run`; call
    `shutdown()` (or `force_flush()`) on it before the process exits."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)))
    return provider


class Run:
    """One agent run: a root span whose trace holds every agent, step, call and tool of it.

    Without a tracer provider the global one is used (a no-op unless the application set
    one up); the run id still reaches the router, which records the calls for replay.
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        name: str = "",
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.run_id = run_id or f"run-{uuid.uuid4().hex[:12]}"
        self.name = name or self.run_id
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(_TRACER_NAME)
        self._stack = contextlib.ExitStack()
        self._span: trace.Span | None = None

    @property
    def trace_id(self) -> str:
        """Hex trace id of the run (empty before it started or when not sampled)."""
        ctx = self._span.get_span_context() if self._span is not None else None
        return format(ctx.trace_id, "032x") if ctx is not None and ctx.is_valid else ""

    def __enter__(self) -> Run:
        self._span = self._stack.enter_context(
            self.tracer.start_as_current_span(
                f"run {self.name}",
                attributes={"gen_ai.operation.name": "invoke_workflow", "interlock.run_id": self.run_id},
            )
        )
        self._stack.enter_context(self._scoped(RunScope(self)))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.__exit__(exc_type, exc, tb)

    @staticmethod
    @contextlib.contextmanager
    def _scoped(scope: RunScope) -> Iterator[RunScope]:
        token = _scope.set(scope)
        try:
            yield scope
        finally:
            _scope.reset(token)

    def _inner(self) -> RunScope:
        scope = current_scope()
        return scope if scope is not None and scope.run is self else RunScope(self)

    @contextlib.contextmanager
    def agent(self, name: str) -> Iterator[trace.Span]:
        """An `invoke_agent {name}` span; calls inside carry this agent name."""
        with (
            self.tracer.start_as_current_span(
                f"invoke_agent {name}",
                attributes={
                    "gen_ai.operation.name": "invoke_agent",
                    "gen_ai.agent.name": name,
                    "interlock.run_id": self.run_id,
                },
            ) as span,
            self._scoped(replace(self._inner(), agent=name, step="")),
        ):
            yield span

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[trace.Span]:
        """A `step {name}` span of the current agent; calls inside carry this step."""
        scope = self._inner()
        with (
            self.tracer.start_as_current_span(
                f"step {name}",
                attributes={
                    "gen_ai.agent.name": scope.agent,
                    "interlock.step": name,
                    "interlock.run_id": self.run_id,
                },
            ) as span,
            self._scoped(replace(scope, step=name)),
        ):
            yield span

    @contextlib.contextmanager
    def tool(self, name: str, call_id: str = "") -> Iterator[trace.Span]:
        """An `execute_tool {name}` span for a tool the agent runs itself (its arguments and
        result are not recorded: they may hold what the router would have redacted)."""
        scope = self._inner()
        attributes: dict[str, str] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.agent.name": scope.agent,
            "interlock.step": scope.step,
            "interlock.run_id": self.run_id,
        }
        if call_id:
            attributes["gen_ai.tool.call.id"] = call_id
        with self.tracer.start_as_current_span(f"execute_tool {name}", attributes=attributes) as span:
            yield span
