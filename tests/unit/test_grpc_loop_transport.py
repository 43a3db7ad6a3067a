"""The event-loop gRPC transport (interlock._grpc_loop) behind the server kit: every behaviour a
caller sees is checked on the service's grpc.aio port and on its loop port alike, with gRPC
core's own client (the one generated stubs use), so the two ports answer the same."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import uvloop

from interlock._server import GrpcService
from interlock.errors import InterlockError, InvalidArgumentError, from_rpc_error
from interlock.router.v1 import router_pb2, router_pb2_grpc

SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"]


class _Servicer:
    """RouterService whose answers say what the handler saw; the prompt picks a behaviour."""

    def __init__(self) -> None:
        self.cancelled: list[bool] = []
        self.release = asyncio.Event()

    async def ListModels(
        self, request: router_pb2.ListModelsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> router_pb2.ListModelsResponse:
        return router_pb2.ListModelsResponse(config_version="v1")

    async def GetRoutes(
        self, request: router_pb2.GetRoutesRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> router_pb2.GetRoutesResponse:
        return router_pb2.GetRoutesResponse(live_version="v1")

    async def Chat(
        self, request: router_pb2.ChatRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> router_pb2.ChatResponse:
        prompt = request.params.messages[0].content
        if prompt == "metadata":
            seen = sorted(
                f"{k}={v.hex() if isinstance(v, bytes) else v}"
                for k, v in context.invocation_metadata() or ()
                if k.startswith("x-")
            )
            return router_pb2.ChatResponse(text=";".join(seen))
        if prompt == "deadline":
            remaining = context.time_remaining()
            return router_pb2.ChatResponse(text="none" if remaining is None else f"{remaining:.0f}")
        if prompt == "invalid":
            raise InvalidArgumentError("temperature must be between 0 and 2", field="params.temperature")
        if prompt == "bug":
            raise RuntimeError("secret upstream payload")
        if prompt == "wait":
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(context.cancelled())
                raise
            return router_pb2.ChatResponse(text="released")
        return router_pb2.ChatResponse(text=prompt[::-1], model=request.params.model)

    async def ChatStream(
        self, request: router_pb2.ChatStreamRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[router_pb2.ChatStreamResponse]:
        count, size = (int(x) for x in request.params.messages[0].content.split("x"))
        for i in range(count):
            yield router_pb2.ChatStreamResponse(delta=f"{i:06d}" + "." * size)
        yield router_pb2.ChatStreamResponse(done=router_pb2.ChatResponse(text=f"{count} deltas"))


def _request(prompt: str, model: str = "gpt-4o-mini") -> router_pb2.ChatRequest:
    params = router_pb2.ChatParams(model=model, messages=[router_pb2.Message(role="user", content=prompt)])
    return router_pb2.ChatRequest(params=params)


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test on the standard loop and on uvloop, which the services run on."""
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.fixture
async def served(restore_gc: None) -> AsyncIterator[tuple[GrpcService, _Servicer, asyncio.Event]]:
    servicer = _Servicer()
    stop = asyncio.Event()
    service = GrpcService(
        name="loop-test", host="127.0.0.1", port=0, services=[(SERVICE, servicer)], loop_port=0, grace_s=5
    )
    running = asyncio.create_task(service.run(stop))
    for _ in range(500):
        if service.loop_bound_port or running.done():
            break
        await asyncio.sleep(0.01)
    assert service.loop_bound_port > 0, running
    try:
        yield service, servicer, stop
    finally:
        servicer.release.set()
        stop.set()
        await running


def _port(service: GrpcService, kind: str) -> int:
    return service.bound_port if kind == "aio" else service.loop_bound_port


PORTS = pytest.mark.parametrize("kind", ["aio", "loop"])


async def _handler_cancelled(servicer: _Servicer, kind: str) -> None:
    """The handler was cancelled once; on the loop port its context said the call was
    (grpc.aio's still says it was not while the handler unwinds, so the kit logs it as a
    cancellation from inside the service)."""
    for _ in range(200):
        if servicer.cancelled:
            break
        await asyncio.sleep(0.01)
    assert len(servicer.cancelled) == 1
    if kind == "loop":
        assert servicer.cancelled == [True]


@PORTS
async def test_a_unary_call_is_answered(served: tuple[GrpcService, _Servicer, asyncio.Event], kind: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{_port(served[0], kind)}") as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        answer = await stub.Chat(_request("interlock"))
        assert (answer.text, answer.model) == ("kcolretni", "gpt-4o-mini")
        assert (await stub.ListModels(router_pb2.ListModelsRequest())).config_version == "v1"
        answers = await asyncio.gather(*(stub.Chat(_request(f"call {i}")) for i in range(100)))
        assert [a.text for a in answers] == [f"call {i}"[::-1] for i in range(100)]


@PORTS
async def test_a_request_and_answer_of_megabytes_cross_whole(
    served: tuple[GrpcService, _Servicer, asyncio.Event], kind: str
) -> None:
    prompt = "".join(chr(ord("a") + i % 26) for i in range(3_000_000))  # hundreds of frames each way
    async with grpc.aio.insecure_channel(f"127.0.0.1:{_port(served[0], kind)}") as channel:
        answer = await router_pb2_grpc.RouterServiceStub(channel).Chat(_request(prompt))
    assert answer.text == prompt[::-1]


@PORTS
async def test_metadata_text_and_binary_reaches_the_handler(
    served: tuple[GrpcService, _Servicer, asyncio.Event], kind: str
) -> None:
    metadata = (("x-api-key", "ik_123"), ("x-blob-bin", b"\x00\xff\x10"), ("x-long", "v" * 300))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{_port(served[0], kind)}") as channel:
        answer = await router_pb2_grpc.RouterServiceStub(channel).Chat(_request("metadata"), metadata=metadata)
    assert answer.text == f"x-api-key=ik_123;x-blob-bin=00ff10;x-long={'v' * 300}"


@PORTS
async def test_the_handler_sees_the_callers_deadline(
    served: tuple[GrpcService, _Servicer, asyncio.Event], kind: str
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{_port(served[0], kind)}") as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        assert (await stub.Chat(_request("deadline"), timeout=30)).text in {"29", "30"}
        assert (await stub.Chat(_request("deadline"))).text == "none"


@PORTS
async def test_a_stream_larger_than_the_flow_control_windows_arrives_whole_and_in_order(
    served: tuple[GrpcService, _Servicer, asyncio.Event], kind: str
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{_port(served[0], kind)}") as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        request = router_pb2.ChatStreamRequest(params=_request("60x50000").params)  # 3 MB of deltas
        messages = [m async for m in stub.ChatStream(request)]
    assert [m.delta[:6] for m in messages[:-1]] == [f"{i:06d}" for i in range(60)]
    assert all(len(m.delta) == 50_006 for m in messages[:-1])
    assert messages[-1].done.text == "60 deltas"


@PORTS
async def test_an_interlock_error_reaches_the_caller_with_its_code_and_details(
    served: tuple[GrpcService, _Servicer, asyncio.Event], kind: str
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{_port(served[0], kind)}") as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Chat(_request("invalid"))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        error = from_rpc_error(raised.value)
        assert isinstance(error, InterlockError)
        assert (error.message, error.field) == ("temperature must be between 0 and 2", "params.temperature")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Chat(_request("bug"))
        assert raised.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in (raised.value.details() or "")
        assert (await stub.Chat(_request("after"))).text == "retfa"  # the connection still serves


@PORTS
async def test_a_call_past_its_deadline_ends_with_deadline_exceeded_and_its_handler_is_cancelled(
    served: tuple[GrpcService, _Servicer, asyncio.Event], kind: str
) -> None:
    servicer = served[1]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{_port(served[0], kind)}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await router_pb2_grpc.RouterServiceStub(channel).Chat(_request("wait"), timeout=0.3)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await _handler_cancelled(servicer, kind)


@PORTS
async def test_a_caller_hanging_up_cancels_the_handler(
    served: tuple[GrpcService, _Servicer, asyncio.Event], kind: str
) -> None:
    servicer = served[1]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{_port(served[0], kind)}") as channel:
        call = router_pb2_grpc.RouterServiceStub(channel).Chat(_request("wait"))
        await asyncio.sleep(0.2)
        call.cancel()
        await _handler_cancelled(servicer, kind)


async def test_an_unknown_method_is_unimplemented_on_the_loop_port(
    served: tuple[GrpcService, _Servicer, asyncio.Event],
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{served[0].loop_bound_port}") as channel:
        method: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/interlock.router.v1.RouterService/Missing"
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await method(b"")
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_stop_lets_calls_in_flight_finish_and_takes_no_new_ones(
    served: tuple[GrpcService, _Servicer, asyncio.Event],
) -> None:
    service, servicer, stop = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.loop_bound_port}") as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        in_flight = asyncio.ensure_future(stub.Chat(_request("wait")))
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.sleep(0.3)
        assert not in_flight.done()
        servicer.release.set()
        assert (await in_flight).text == "released"
    await asyncio.sleep(0.2)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.loop_bound_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await router_pb2_grpc.RouterServiceStub(channel).Chat(_request("late"), timeout=2)
    assert raised.value.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
