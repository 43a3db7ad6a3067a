"""`make bench-floor`'s event-loop gRPC server (bench/grpc_loop.py) is measured against
grpc.aio, so it must be a gRPC server a real client accepts: gRPC core's own client calls it
here, including answers larger than HTTP/2's default frame and flow-control windows."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import uvloop

from bench.grpc_loop import serve


async def _reverse(request: bytes) -> bytes:
    await asyncio.sleep(0)
    return request[::-1]


async def _large(request: bytes) -> bytes:
    return bytes(range(256)) * (int(request.decode()) // 256)


async def _fails(request: bytes) -> bytes:
    raise RuntimeError("the method failed")


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test on the standard loop and on uvloop, which the services run on."""
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


@pytest.fixture
async def channel() -> object:
    server = await serve("127.0.0.1", 0, {"/t.S/Reverse": _reverse, "/t.S/Large": _large, "/t.S/Fails": _fails})
    port = server.sockets[0].getsockname()[1]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    server.close()
    await server.wait_closed()


def _method(channel: grpc.aio.Channel, name: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(f"/t.S/{name}", request_serializer=None, response_deserializer=None)


async def test_a_unary_call_gets_its_answer(channel: grpc.aio.Channel) -> None:
    assert await _method(channel, "Reverse")(b"interlock") == b"kcolretni"


async def test_calls_in_parallel_on_one_connection_each_get_their_own_answer(channel: grpc.aio.Channel) -> None:
    reverse = _method(channel, "Reverse")
    answers = await asyncio.gather(*(reverse(f"call {i}".encode()) for i in range(200)))
    assert answers == [f"call {i}".encode()[::-1] for i in range(200)]


async def test_an_answer_past_the_default_frame_and_windows_arrives_whole(channel: grpc.aio.Channel) -> None:
    size = 3 * 1024 * 1024  # 192 default-size frames, 48 times the default 64 kB window
    large = _method(channel, "Large")
    answers = await asyncio.gather(large(str(size).encode()), large(str(size).encode()))
    assert list(answers) == [bytes(range(256)) * (size // 256)] * 2


async def test_an_unknown_method_is_unimplemented(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _method(channel, "Missing")(b"")
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_failing_method_ends_its_call_with_internal_and_not_the_others(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _method(channel, "Fails")(b"")
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert await _method(channel, "Reverse")(b"ok") == b"ko"
