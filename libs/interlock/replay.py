"""Replay of a recorded agent run, from trace-ingest.

    recording = interlock.Recording.fetch("run-42", target="127.0.0.1:50054", api_key=KEY)
    client = interlock.ReplayClient(recording)          # or AsyncReplayClient
    run_my_agents(client)                                # the same agent code, unchanged
    client.finish()                                      # every recorded call was replayed

Each call is served the answer recorded for it, with no router or provider involved. Calls
are matched by (agent, step) and their order within that pair; before answering, the
client checks that the agent asks exactly what it asked when recorded (by the digests the
router recorded of the unredacted request) and raises `ReplayDivergenceError` naming the
agent, step and first differing field otherwise.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from interlock import recording
from interlock.client import ChatResult, ToolCall, Usage, chat_params
from interlock.errors import ErrorCode, InterlockError, UpstreamError, from_rpc_error
from interlock.pricing import nanos_to_usd
from interlock.router.v1 import router_pb2


class ReplayDivergenceError(InterlockError):
    """The agent code asked something other than what the recording holds."""

    def __init__(self, message: str, *, agent: str, step: str, call_index: int, field: str | None = None) -> None:
        super().__init__(
            message,
            code=ErrorCode.FAILED_PRECONDITION,
            field=field,
            metadata={"agent": agent, "step": step, "call_index": str(call_index)},
        )
        self.agent = agent
        self.step = step
        self.call_index = call_index


@dataclass(frozen=True)
class RecordedCall:
    """One LLM call of a recorded run (bodies redacted by the router)."""

    trace_id: str
    span_id: str
    request_id: str
    agent: str
    step: str
    request_model: str
    response_model: str
    provider: str
    request: Mapping[str, Any]
    """`{"messages": [GenAI messages], "params": {max_tokens, tools, ...}}`."""
    response: Mapping[str, Any]
    """`{"messages": [one GenAI assistant message]}`; empty for a failed call."""
    request_digest: str
    message_digests: tuple[str, ...]
    input_tokens: int
    output_tokens: int
    cost_nanos: int
    latency_ms: float
    status: str
    error: str
    config_version: str
    attempts: int
    start_time_ns: int

    @property
    def text(self) -> str:
        return "".join(p.get("content", "") for p in self._answer_parts() if p.get("type") == "text")

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(str(p.get("id", "")), str(p.get("name", "")), str(p.get("arguments", "")))
            for p in self._answer_parts()
            if p.get("type") == "tool_call"
        )

    @property
    def finish_reason(self) -> str:
        messages = self.response.get("messages") or [{}]
        return str(messages[0].get("finish_reason", ""))

    def _answer_parts(self) -> list[dict[str, Any]]:
        messages = self.response.get("messages") or []
        return [p for m in messages for p in m.get("parts", [])]

    def result(self) -> ChatResult:
        """The answer as the client returned it when the run was recorded."""
        return ChatResult(
            text=self.text,
            usage=Usage(self.input_tokens, self.output_tokens),
            cost_usd=nanos_to_usd(self.cost_nanos),
            cost_nanos=self.cost_nanos,
            request_id=self.request_id,
            trace_id=self.trace_id,
            model=self.request_model,
            provider=self.provider,
            finish_reason=self.finish_reason,
            tool_calls=self.tool_calls,
        )

    def messages(self) -> list[dict[str, Any]]:
        """The recorded (redacted) request messages in the client's input shape."""
        out: list[dict[str, Any]] = []
        for m in self.request.get("messages", []):
            item: dict[str, Any] = {"role": m.get("role", "user"), "content": ""}
            calls = []
            for part in m.get("parts", []):
                kind = part.get("type")
                if kind == "text":
                    item["content"] += part.get("content", "")
                elif kind == "tool_call_response":
                    item["tool_call_id"] = part.get("id", "")
                    item["content"] += str(part.get("response", ""))
                elif kind == "tool_call":
                    calls.append({"id": part.get("id", ""), "name": part["name"], "arguments": part["arguments"]})
            if calls:
                item["tool_calls"] = calls
            if m.get("name"):
                item["name"] = m["name"]
            out.append(item)
        return out


def _call_from_message(c: Any) -> RecordedCall:
    return RecordedCall(
        trace_id=c.trace_id,
        span_id=c.span_id,
        request_id=c.request_id,
        agent=c.agent,
        step=c.step,
        request_model=c.request_model,
        response_model=c.response_model,
        provider=c.provider,
        request=json.loads(c.request_json or "{}"),
        response=json.loads(c.response_json or "{}"),
        request_digest=c.request_digest,
        message_digests=tuple(c.message_digests),
        input_tokens=c.input_tokens,
        output_tokens=c.output_tokens,
        cost_nanos=c.cost_nanos,
        latency_ms=c.latency_ms,
        status=c.status,
        error=c.error,
        config_version=c.config_version,
        attempts=c.attempts,
        start_time_ns=c.start_time.ToNanoseconds(),
    )


@dataclass(frozen=True)
class Recording:
    """A recorded run: its calls in the order they started, and the raw GetRun answer."""

    run_id: str
    calls: tuple[RecordedCall, ...]
    response: Any
    """The `GetRunResponse` (summary and spans)."""

    @classmethod
    def fetch(cls, run_id: str, target: str = "127.0.0.1:50054", api_key: str | None = None) -> Recording:
        """Read the run from trace-ingest; with an API key, only that key's project's runs."""
        from interlock.traceingest.v1 import traceingest_pb2, traceingest_pb2_grpc

        metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        with grpc.insecure_channel(target) as channel:
            try:
                response = traceingest_pb2_grpc.TraceIngestServiceStub(channel).GetRun(
                    traceingest_pb2.GetRunRequest(run_id=run_id), metadata=metadata, timeout=30
                )
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None
        return cls(run_id, tuple(_call_from_message(c) for c in response.calls), response)


def _digests(params: router_pb2.ChatParams) -> tuple[list[str], str]:
    """The digests the router records for `params` (see interlock.recording)."""
    messages = [
        recording.message_digest(
            m.role, m.content, [(c.id, c.name, c.arguments) for c in m.tool_calls], m.tool_call_id, m.name
        )
        for m in params.messages
    ]
    tools = [(t.name, t.description, json.loads(t.parameters_json) if t.parameters_json else {}) for t in params.tools]
    whole = recording.request_digest(
        params.model,
        messages,
        params.max_tokens,
        tools,
        params.tool_choice,
        params.temperature if params.HasField("temperature") else None,
    )
    return messages, whole


class ReplayClient:
    """Serves a recorded run's answers to agent code written against `interlock.Client`."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self._queues: dict[tuple[str, str], deque[tuple[int, RecordedCall]]] = defaultdict(deque)
        for call in recording.calls:
            queue = self._queues[(call.agent, call.step)]
            queue.append((len(queue), call))
        self.replayed = 0

    def chat(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        max_tokens: int,
        temperature: float | None = None,
        request_id: str | None = None,
        run_id: str | None = None,
        agent: str | None = None,
        step: str | None = None,
        tools: Sequence[Mapping[str, Any]] = (),
        tool_choice: str | None = None,
    ) -> ChatResult:
        params = chat_params(
            model, messages, max_tokens, temperature, request_id, run_id, agent, step, tools, tool_choice
        )
        queue = self._queues.get((params.agent, params.step))
        where = f"agent {params.agent!r} step {params.step!r}"
        if not queue:
            raise ReplayDivergenceError(
                f"{where}: the recording has no further call here", agent=params.agent, step=params.step, call_index=0
            )
        index, recorded = queue.popleft()
        where += f" call #{index}"

        def diverged(what: str, field: str) -> ReplayDivergenceError:
            return ReplayDivergenceError(
                f"{where} diverges from the recording: {what}",
                agent=params.agent,
                step=params.step,
                call_index=index,
                field=field,
            )

        if params.model != recorded.request_model:
            raise diverged(f"model {params.model!r}, recorded {recorded.request_model!r}", "model")
        digests, whole = _digests(params)
        if len(digests) != len(recorded.message_digests):
            raise diverged(f"{len(digests)} messages, recorded {len(recorded.message_digests)}", "messages")
        for i, (now, then) in enumerate(zip(digests, recorded.message_digests, strict=True)):
            if now != then:
                raise diverged(f"messages[{i}] differs", f"messages[{i}]")
        if whole != recorded.request_digest:
            raise diverged("parameters (max_tokens, temperature, tools or tool_choice) differ", "params")
        self.replayed += 1
        if recorded.status == "ERROR":
            raise UpstreamError(f"recorded failure: {recorded.error}")
        return recorded.result()

    def finish(self) -> None:
        """Raise ReplayDivergenceError when the agent code made fewer calls than were recorded."""
        for (agent, step), queue in self._queues.items():
            if queue:
                index, _ = queue[0]
                raise ReplayDivergenceError(
                    f"agent {agent!r} step {step!r}: {len(queue)} recorded call(s) from #{index} were never made",
                    agent=agent,
                    step=step,
                    call_index=index,
                )

    def close(self) -> None:
        """Nothing to close; here so agent code can treat it as a Client."""


class AsyncReplayClient:
    """The asyncio twin of ReplayClient, for agent code written against `interlock.AsyncClient`."""

    def __init__(self, recording: Recording) -> None:
        self.sync = ReplayClient(recording)

    async def chat(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        max_tokens: int,
        temperature: float | None = None,
        request_id: str | None = None,
        run_id: str | None = None,
        agent: str | None = None,
        step: str | None = None,
        tools: Sequence[Mapping[str, Any]] = (),
        tool_choice: str | None = None,
    ) -> ChatResult:
        return self.sync.chat(
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            request_id=request_id,
            run_id=run_id,
            agent=agent,
            step=step,
            tools=tools,
            tool_choice=tool_choice,
        )

    def finish(self) -> None:
        self.sync.finish()

    async def close(self) -> None:
        """Nothing to close."""
