"""RouterService: authenticate, translate protobuf <-> domain, run the chat flow."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
from opentelemetry import trace

from interlock._telemetry import trace_id_of
from interlock.errors import AuthenticationError, InvalidArgumentError
from interlock.router.v1 import router_pb2
from interlock.services.router.adapters.live_routing import LiveRouting
from interlock.services.router.adapters.load_shedding import LoadShedder
from interlock.services.router.adapters.mesh_clients import BudgetClient
from interlock.services.router.api.read_ahead import read_ahead
from interlock.services.router.domain.chat import ChatCall, new_request_id, validate_chat
from interlock.services.router.domain.flow import Caller, ChatFlow, ChatResult
from interlock.services.router.domain.provider import ChatMessage, StreamToolCallDelta, ToolCall, ToolSpec
from interlock.services.router.domain.routing import RoutingConfig

Ctx = grpc.aio.ServicerContext[Any, Any]


def _tag_span(call: ChatCall) -> str:
    """Tag the call's span (when its trace is sampled); returns its trace id for the answer."""
    span = trace.get_current_span()
    if not span.is_recording():  # not sampled: nothing to tag
        return trace_id_of(span)
    span.set_attribute("interlock.config_version", call.config_version)
    span.set_attribute("interlock.request_id", call.request_id)
    span.set_attribute("gen_ai.request.model", call.route.name)
    if call.run_id:
        span.set_attribute("interlock.run_id", call.run_id)
    return trace_id_of(span)


def api_key_of(context: Ctx) -> str:
    """The key from `authorization: Bearer <key>` or `x-api-key: <key>` metadata."""
    for key, value in context.invocation_metadata() or ():
        text = value.decode() if isinstance(value, bytes) else value
        if key == "authorization" and text[:7].lower() == "bearer ":
            return text[7:].strip()
        if key == "x-api-key":
            return text.strip()
    return ""


class RouterServicer:
    def __init__(
        self, live: LiveRouting, flow: ChatFlow, auth: BudgetClient, shedder: LoadShedder | None = None
    ) -> None:
        self.live = live
        self._flow = flow
        self._auth = auth
        self._shedder = shedder or LoadShedder.off()

    async def _caller(self, context: Ctx) -> Caller:
        key = api_key_of(context)
        if not key:
            raise AuthenticationError("missing API key: send `authorization: Bearer <key>` metadata")
        return await self._auth.authenticate(key)

    def _call(self, config: RoutingConfig, params: router_pb2.ChatParams) -> ChatCall:
        tools = []
        for i, t in enumerate(params.tools):
            try:
                schema = json.loads(t.parameters_json) if t.parameters_json else {}
            except ValueError:
                schema = None
            if not isinstance(schema, dict):
                raise InvalidArgumentError(
                    "must be a JSON object (a JSON Schema)", field=f"params.tools[{i}].parameters_json"
                )
            tools.append(ToolSpec(t.name, t.description, schema))
        return validate_chat(
            config,
            model=params.model,
            messages=[
                ChatMessage(
                    m.role,
                    m.content,
                    tool_calls=tuple(ToolCall(c.id, c.name, c.arguments) for c in m.tool_calls),
                    tool_call_id=m.tool_call_id,
                    name=m.name,
                )
                for m in params.messages
            ],
            max_tokens=params.max_tokens,
            temperature=params.temperature if params.HasField("temperature") else None,
            request_id=params.request_id or new_request_id(),
            run_id=params.run_id,
            agent=params.agent,
            top_p=params.top_p if params.HasField("top_p") else None,
            stop=list(params.stop),
            tools=tools,
            tool_choice=params.tool_choice or None,
            json_mode=params.json_mode,
            step=params.step,
            started_at=time.monotonic(),
        )

    @staticmethod
    def _response(result: ChatResult, trace_id: str) -> router_pb2.ChatResponse:
        return router_pb2.ChatResponse(
            request_id=result.request_id,
            model=result.model,
            provider=result.provider,
            text=result.text,
            finish_reason=result.finish_reason,
            usage=router_pb2.Usage(
                input_tokens=result.usage.input_tokens,
                output_tokens=result.usage.output_tokens,
                cached_input_tokens=result.usage.cached_input_tokens,
                reasoning_tokens=result.usage.reasoning_tokens,
                cache_write_tokens=result.usage.cache_write_tokens,
            ),
            cost_nanos=result.cost_nanos,
            trace_id=trace_id,
            tool_calls=[router_pb2.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in result.tool_calls],
        )

    async def ListModels(self, request: router_pb2.ListModelsRequest, context: Ctx) -> router_pb2.ListModelsResponse:
        await self._caller(context)
        config = self.live.current.config
        response = router_pb2.ListModelsResponse(config_version=config.version)
        for name, route in sorted(config.models.items()):
            prices = route.pricing.usd_per_mtok()
            response.models.add(
                name=name,
                provider=route.provider,
                upstream_model=route.upstream_model,
                context_window=route.pricing.context_window or 0,
                input_usd_per_mtok="" if prices[0] is None else str(prices[0]),
                output_usd_per_mtok="" if prices[1] is None else str(prices[1]),
                cached_input_usd_per_mtok="" if prices[2] is None else str(prices[2]),
                price_source="custom" if route.pricing.provider_id == "custom" else "genai-prices",
            )
        return response

    async def GetRoutes(self, request: router_pb2.GetRoutesRequest, context: Ctx) -> router_pb2.GetRoutesResponse:
        await self._caller(context)
        snap = self.live.current
        response = router_pb2.GetRoutesResponse(live_version=snap.config.version)
        response.loaded_at.FromNanoseconds(int(snap.loaded_at * 1e9))
        for switch in self.live.switches:
            item = response.switches.add(version=switch.version, accepted=switch.accepted, error=switch.error)
            item.at.FromNanoseconds(int(switch.at * 1e9))
        for name, route in snap.config.models.items():
            response.chains[name] = " > ".join(
                f"{d.provider}/{d.upstream_model}"
                + (f" (w={d.weight:g}, p={d.priority})" if len(route.deployments) > 1 else "")
                for d in route.deployments
            )
        return response

    async def Chat(self, request: router_pb2.ChatRequest, context: Ctx) -> router_pb2.ChatResponse:
        with self._shedder.admit():
            caller = await self._caller(context)
            snap = self.live.current  # the call is pinned to this version to its end
            call = self._call(snap.config, request.params)
            trace_id = _tag_span(call)
            result = await self._flow.chat(caller, call, context.time_remaining(), snap.providers)
        response = self._response(result, trace_id)
        response.config_version = call.config_version
        return response

    async def ChatStream(
        self, request: router_pb2.ChatStreamRequest, context: Ctx
    ) -> AsyncIterator[router_pb2.ChatStreamResponse]:
        with self._shedder.admit():
            caller = await self._caller(context)
            snap = self.live.current
            call = self._call(snap.config, request.params)
            trace_id = _tag_span(call)
            pieces = self._flow.stream(caller, call, context.time_remaining(), snap.providers)
            # Pieces that arrived together leave as one message (services/router/api/read_ahead.py).
            async with contextlib.aclosing(read_ahead(pieces)) as batches:
                async for batch in batches:
                    for message in stream_messages(batch, call.config_version, trace_id):
                        yield message


def stream_messages(
    batch: list[str | StreamToolCallDelta | ChatResult], config_version: str, trace_id: str
) -> Iterator[router_pb2.ChatStreamResponse]:
    """ChatStream's messages for pieces read together: consecutive text deltas joined into one."""
    text: list[str] = []
    for item in batch:
        if isinstance(item, str):
            text.append(item)
            continue
        if text:
            yield router_pb2.ChatStreamResponse(delta="".join(text))
            text.clear()
        if isinstance(item, StreamToolCallDelta):
            delta = router_pb2.ToolCallDelta(index=item.index, id=item.id, name=item.name, arguments=item.arguments)
            yield router_pb2.ChatStreamResponse(tool_call=delta)
        else:
            done = RouterServicer._response(item, trace_id)
            done.config_version = config_version
            yield router_pb2.ChatStreamResponse(done=done)
    if text:
        yield router_pb2.ChatStreamResponse(delta="".join(text))
