"""A gRPC server that runs on the service's event loop: the router's low-latency data plane.

grpc.aio passes every event of a call (its arrival, its request message, each answer sent,
its close) from gRPC core's completion-queue poller thread to the event loop through a
socket, and every hand-off is a wake-up of one thread by another. This server does the
HTTP/2 work in the event loop's own `data_received`: frames are parsed as they arrive
(HPACK header blocks by interlock._hpack), the method runs when the request's last frame is
in, and a unary answer leaves as one write of its headers, message and trailers. A call then costs the loop
one wake-up for the request plus whatever its method waits on (docs/BENCHMARKS.md, the
floor; round 16 in docs/BENCHMARKS-history.md).

It serves what the server kit (interlock._server) registers: unary and server-streaming
methods taking and returning serialized messages, through the same handlers grpc.aio runs,
with a `grpc.aio.ServicerContext` of its own (metadata, deadline, cancellation, abort with
status and details). It keeps HTTP/2's rules a client checks (SETTINGS, PING, flow control
both ways, frame sizes, GOAWAY on a graceful stop) and gRPC's (deadlines from
`grpc-timeout`, the client's reset cancelling the call, trailers-only errors, binary
metadata, the message size limit). Not served: TLS, compressed messages (a call sending one
gets UNIMPLEMENTED), client streaming. Health and reflection stay on the service's grpc.aio
port; this one is opt-in (`INTERLOCK_ROUTER_LOOP_GRPC_PORT`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import struct
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn, cast

import grpc

from interlock._hpack import HeaderBlockDecoder, HpackError

log = logging.getLogger("interlock.grpc_loop")

UnaryHandler = Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]
StreamHandler = Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], AsyncGenerator[bytes, None]]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
_END_STREAM = _ACK = 0x1
_END_HEADERS, _PADDED, _PRIORITY = 0x4, 0x8, 0x20
_INITIAL_WINDOW_SIZE_SETTING, _MAX_FRAME_SIZE_SETTING = 0x4, 0x5
_NO_ERROR, _PROTOCOL_ERROR, _FRAME_SIZE_ERROR, _REFUSED_STREAM, _COMPRESSION_ERROR = 0, 1, 6, 7, 9
_FRAME_HEADER = struct.Struct(">BHBBL")  # length (24 bits as 8 + 16), type, flags, stream id
_DEFAULT_WINDOW = 65_535
_DEFAULT_MAX_FRAME = 16_384
_RECEIVE_WINDOW = 1 << 30
"""Receive window advertised for the connection and each stream; given back as it is read."""

# HPACK with no dynamic table on the way out, so encoding keeps no state (RFC 7541): `:status:
# 200` is entry 8 of the static table, the rest are literals not indexed.
_RESPONSE_HEADERS = b"\x88" + b"\x0f\x10" + bytes([16]) + b"application/grpc"
_OK_TRAILERS = b"\x00" + bytes([11]) + b"grpc-status" + b"\x01" + b"0"
_NOT_METADATA = frozenset(
    {b"te", b"content-type", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding", b"content-length"}
)
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME_HEADER.pack(n >> 16, n & 0xFFFF, kind, flags, stream_id) + payload


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal with a literal name, not indexed, not Huffman-coded."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


def _percent_encode(text: str) -> bytes:
    """`grpc-message`'s encoding: UTF-8, with bytes outside printable ASCII and `%` escaped."""
    return b"".join(
        bytes([b]) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in text.encode("utf-8", "replace")
    )


def _trailers(code: grpc.StatusCode, details: str, metadata: Sequence[tuple[str, str | bytes]]) -> bytes:
    if code is grpc.StatusCode.OK and not details and not metadata:
        return _OK_TRAILERS
    block = [_literal(b"grpc-status", str(code.value[0]).encode())]
    if details:
        block.append(_literal(b"grpc-message", _percent_encode(details)))
    for key, value in metadata:
        raw = value if isinstance(value, bytes) else value.encode()
        if key.endswith("-bin"):
            raw = base64.b64encode(raw).rstrip(b"=")
        block.append(_literal(key.lower().encode(), raw))
    return b"".join(block)


def _parse_timeout(value: bytes) -> float | None:
    try:
        return int(value[:-1]) * _TIMEOUT_UNITS[value[-1:]]
    except (KeyError, ValueError):
        return None


class LoopServicerContext(grpc.aio.ServicerContext[Any, Any]):
    """What a handler sees of its call on the loop server (grpc.aio's context API)."""

    def __init__(self, metadata: tuple[tuple[str, str | bytes], ...], deadline: float | None, peer: str) -> None:
        self._metadata = metadata
        self._deadline = deadline
        self._peer = peer
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()
        self._cancelled = False
        self._done = False
        self._callbacks: list[Callable[[Any], None]] = []

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        if code is grpc.StatusCode.OK:
            raise ValueError("abort with OK")
        self._code = code
        self._details = details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError()

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)

    async def read(self) -> Any:
        raise NotImplementedError("client streaming is not served on the loop server")

    async def write(self, message: Any) -> None:
        raise NotImplementedError("answers are the handler's return value or its yields")

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        raise NotImplementedError("initial metadata is not sent by the loop server")

    def add_done_callback(self, callback: Any) -> None:
        self._callbacks.append(callback)

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._trailing = tuple(trailing_metadata)

    def invocation_metadata(self) -> Any:
        return self._metadata

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def set_compression(self, compression: grpc.Compression) -> None:
        pass  # answers are sent uncompressed

    def disable_next_message_compression(self) -> None:
        pass

    def peer(self) -> str:
        return self._peer

    def peer_identities(self) -> Iterable[bytes] | None:
        return None

    def peer_identity_key(self) -> str | None:
        return None

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return {}

    def time_remaining(self) -> float | None:  # type: ignore[override]  # grpc.aio: None without a deadline
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def trailing_metadata(self) -> Any:
        return self._trailing

    def code(self) -> Any:
        return self._code

    def details(self) -> str:
        return self._details

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._done

    def _finish(self) -> None:
        self._done = True
        for callback in self._callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("a done callback failed")


class _Stream:
    __slots__ = (
        "block",
        "body",
        "body_bytes",
        "context",
        "ended",
        "expired",
        "headers_sent",
        "metadata_pairs",
        "path",
        "send_window",
        "task",
        "timeout",
        "window_open",
    )

    def __init__(self, send_window: int) -> None:
        self.block = b""
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.ended = False
        self.path = b""
        self.timeout: float | None = None
        self.metadata_pairs: list[tuple[str, str | bytes]] = []
        self.send_window = send_window
        self.window_open: asyncio.Event | None = None
        self.task: asyncio.Task[None] | None = None
        self.context: LoopServicerContext | None = None
        self.headers_sent = False
        self.expired = False


class LoopGrpcServer:
    """Serves `handlers` (by path, `/package.Service/Method`) on the running event loop."""

    def __init__(self, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]], max_message_bytes: int) -> None:
        self._handlers = {path.encode(): handler for path, handler in handlers.items()}
        self.max_message_bytes = max_message_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen on `host:port` (0 for any free port); returns the port bound."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, backlog=4096)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, tell every client (GOAWAY) that no new call is taken, give the calls
        in flight `grace_s` to finish, then cancel what is left and close."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.go_away()
        tasks = [task for connection in self._connections for task in connection.tasks()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        for connection in list(self._connections):
            connection.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


class _Connection(asyncio.Protocol):
    """One client connection: frames parsed as they arrive, a task per call."""

    def __init__(self, server: LoopGrpcServer) -> None:
        self._server = server
        self._buffer = b""
        self._preface_seen = False
        self._decoder = HeaderBlockDecoder()
        self._streams: dict[int, _Stream] = {}
        self._received = 0
        self._send_window = _DEFAULT_WINDOW
        self._initial_window = _DEFAULT_WINDOW
        self._max_frame = _DEFAULT_MAX_FRAME
        self._last_stream = 0
        self._going_away = False
        self._transport: asyncio.Transport | None = None
        self._peer = ""

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):  # as grpc.aio names peers
            self._peer = f"ipv6:[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"ipv4:{peer[0]}:{peer[1]}"
        self._server._connections.add(self)
        settings = struct.pack(">HL", _INITIAL_WINDOW_SIZE_SETTING, _RECEIVE_WINDOW)
        window = struct.pack(">L", _RECEIVE_WINDOW - _DEFAULT_WINDOW)
        self._write(_frame(_SETTINGS, 0, 0, settings) + _frame(_WINDOW_UPDATE, 0, 0, window))

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        self._transport = None
        for stream in self._streams.values():
            self._cancel(stream)
        self._streams.clear()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        pos = 0
        if not self._preface_seen:
            if len(buffer) < len(PREFACE):
                self._buffer = buffer
                return
            if not buffer.startswith(PREFACE):
                self._fail(_PROTOCOL_ERROR)
                return
            self._preface_seen = True
            pos = len(PREFACE)
        replies: list[bytes] = []
        end = len(buffer)
        while end - pos >= 9:
            high, low, kind, flags, stream_id = _FRAME_HEADER.unpack_from(buffer, pos)
            length = (high << 16) | low
            if length > _DEFAULT_MAX_FRAME:  # past what this server's SETTINGS allow
                self._fail(_FRAME_SIZE_ERROR)
                return
            if end - pos - 9 < length:
                break
            payload = buffer[pos + 9 : pos + 9 + length]
            pos += 9 + length
            stream_id &= 0x7FFF_FFFF
            if kind == _DATA:
                self._received += length
                self._on_data(stream_id, flags, payload)
            elif kind == _HEADERS:
                self._on_headers(stream_id, flags, payload)
            elif kind == _CONTINUATION:
                stream = self._streams.get(stream_id)
                if stream is not None:
                    stream.block += payload
                    if flags & _END_HEADERS:
                        self._on_header_block(stream_id, stream)
            elif kind == _SETTINGS:
                if not flags & _ACK:
                    self._on_settings(payload)
                    replies.append(_frame(_SETTINGS, _ACK, 0))
            elif kind == _PING:
                if not flags & _ACK:
                    replies.append(_frame(_PING, _ACK, 0, payload))
            elif kind == _WINDOW_UPDATE:
                (increment,) = struct.unpack(">L", payload)
                self._on_window_update(stream_id, increment & 0x7FFF_FFFF)
            elif kind == _RST_STREAM:
                stream = self._streams.pop(stream_id, None)
                if stream is not None:
                    self._cancel(stream)
            # GOAWAY from the client: it opens no more streams, the open ones finish. PRIORITY,
            # PUSH_PROMISE (never sent by clients) and unknown frames are ignored, as RFC 9113 says.
        if self._received > _RECEIVE_WINDOW // 2:
            replies.append(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">L", self._received)))
            self._received = 0
        self._buffer = buffer[pos:]
        if replies:
            self._write(b"".join(replies))

    # --- frames

    def _on_headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if flags & _PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        if flags & _PRIORITY:
            payload = payload[5:]
        stream = self._streams.get(stream_id)
        if stream is not None:  # the request's trailers: only their END_STREAM matters
            if flags & _END_STREAM:
                stream.ended = True
                self._dispatch(stream_id, stream)
            return
        if stream_id <= self._last_stream or stream_id % 2 == 0:
            self._fail(_PROTOCOL_ERROR)
            return
        self._last_stream = stream_id
        stream = _Stream(self._initial_window)
        stream.block = payload
        stream.ended = bool(flags & _END_STREAM)
        if self._going_away:
            self._write(_frame(_RST_STREAM, 0, stream_id, struct.pack(">L", _REFUSED_STREAM)))
            return
        self._streams[stream_id] = stream
        if flags & _END_HEADERS:
            self._on_header_block(stream_id, stream)

    def _on_header_block(self, stream_id: int, stream: _Stream) -> None:
        metadata: list[tuple[str, str | bytes]] = []
        try:
            fields = self._decoder.decode(stream.block)
        except HpackError:
            self._fail(_COMPRESSION_ERROR)
            return
        for name, value in fields:
            if name[:1] == b":":
                if name == b":path":
                    stream.path = value
            elif name == b"grpc-timeout":
                stream.timeout = _parse_timeout(value)
            elif name not in _NOT_METADATA:
                key = name.decode("latin-1")
                if key.endswith("-bin"):
                    metadata.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
                else:
                    metadata.append((key, value.decode("latin-1")))
        stream.block = b""
        stream.metadata_pairs = metadata
        if stream.ended:
            self._dispatch(stream_id, stream)

    def _on_data(self, stream_id: int, flags: int, payload: bytes) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or stream.task is not None:
            return
        if flags & _PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        stream.body.append(payload)
        stream.body_bytes += len(payload)
        if stream.body_bytes > self._server.max_message_bytes + 5:
            self._refuse(stream_id, grpc.StatusCode.RESOURCE_EXHAUSTED, "request message larger than the limit")
            return
        if flags & _END_STREAM:
            stream.ended = True
            self._dispatch(stream_id, stream)

    def _on_settings(self, payload: bytes) -> None:
        for offset in range(0, len(payload) - 5, 6):
            key, value = struct.unpack_from(">HL", payload, offset)
            if key == _INITIAL_WINDOW_SIZE_SETTING:
                delta = value - self._initial_window
                self._initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    self._wake(stream)
            elif key == _MAX_FRAME_SIZE_SETTING:
                self._max_frame = value

    def _on_window_update(self, stream_id: int, increment: int) -> None:
        if stream_id == 0:
            self._send_window += increment
            for stream in self._streams.values():
                self._wake(stream)
        elif (target := self._streams.get(stream_id)) is not None:
            target.send_window += increment
            self._wake(target)

    # --- calls

    def _dispatch(self, stream_id: int, stream: _Stream) -> None:
        body = b"".join(stream.body)
        stream.body = []
        handler = self._server._handlers.get(stream.path)
        if handler is None:
            self._refuse(stream_id, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return
        if len(body) < 5 or len(body) != 5 + int.from_bytes(body[1:5], "big"):
            self._refuse(stream_id, grpc.StatusCode.INTERNAL, "the request is not one gRPC message")
            return
        if body[0]:
            self._refuse(stream_id, grpc.StatusCode.UNIMPLEMENTED, "compressed messages are not served here")
            return
        deadline = None if stream.timeout is None else time.monotonic() + stream.timeout
        stream.context = LoopServicerContext(tuple(stream.metadata_pairs), deadline, self._peer)
        stream.task = asyncio.get_running_loop().create_task(self._run(stream_id, stream, handler, body[5:]))

    async def _run(
        self, stream_id: int, stream: _Stream, handler: grpc.RpcMethodHandler[Any, Any], message: bytes
    ) -> None:
        context = stream.context
        assert context is not None
        timer = None
        if stream.timeout is not None:
            timer = asyncio.get_running_loop().call_later(stream.timeout, self._expire, stream)
        try:
            if handler.unary_unary is not None:
                unary = cast(UnaryHandler, handler.unary_unary)  # the kit's handlers are coroutines
                answer = await unary(message, context)
                if timer is not None:
                    timer.cancel()
                self._send_unary(stream_id, stream, answer, context)
                return
            if handler.unary_stream is not None:
                items = cast(StreamHandler, handler.unary_stream)(message, context)
                try:
                    async for item in items:
                        await self._send_message(stream_id, stream, item)
                finally:
                    await items.aclose()
                code = context._code or grpc.StatusCode.OK
                self._end(stream_id, stream, code, context._details, context._trailing)
                return
            self._end(stream_id, stream, grpc.StatusCode.UNIMPLEMENTED, "client streaming is not served here", ())
        except grpc.aio.AbortError:
            code = context._code or grpc.StatusCode.UNKNOWN
            self._end(stream_id, stream, code, context._details, context._trailing)
        except asyncio.CancelledError:
            if stream.expired:
                self._end(stream_id, stream, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", ())
            elif not context._cancelled:
                raise  # the server is stopping
        except Exception:
            log.exception("unhandled error in a call", extra={"fields": {"method": stream.path.decode()}})
            self._end(stream_id, stream, grpc.StatusCode.UNKNOWN, "Unexpected error", ())
        finally:
            if timer is not None:
                timer.cancel()
            context._finish()

    def _expire(self, stream: _Stream) -> None:
        if stream.task is not None and not stream.task.done():
            stream.expired = True
            if stream.context is not None:
                stream.context._cancelled = True  # as grpc.aio reports a call past its deadline
            stream.task.cancel()

    def _cancel(self, stream: _Stream) -> None:
        if stream.context is not None:
            stream.context._cancelled = True
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        if stream.window_open is not None:
            stream.window_open.set()

    def tasks(self) -> list[asyncio.Task[None]]:
        return [s.task for s in self._streams.values() if s.task is not None and not s.task.done()]

    # --- sending

    def _send_unary(self, stream_id: int, stream: _Stream, answer: bytes, context: LoopServicerContext) -> None:
        code = context._code or grpc.StatusCode.OK
        if code is not grpc.StatusCode.OK:
            self._end(stream_id, stream, code, context._details, context._trailing)
            return
        message = b"\x00" + len(answer).to_bytes(4, "big") + answer
        trailers = _trailers(code, context._details, context._trailing)
        if len(message) <= min(self._send_window, stream.send_window, self._max_frame):
            # The common case: headers, the message and trailers in one write.
            self._send_window -= len(message)
            self._streams.pop(stream_id, None)
            self._write(
                _frame(_HEADERS, _END_HEADERS, stream_id, _RESPONSE_HEADERS)
                + _frame(_DATA, 0, stream_id, message)
                + _frame(_HEADERS, _END_HEADERS | _END_STREAM, stream_id, trailers)
            )
        else:
            stream.task = asyncio.get_running_loop().create_task(self._send_large(stream_id, stream, message, trailers))

    async def _send_large(self, stream_id: int, stream: _Stream, message: bytes, trailers: bytes) -> None:
        await self._send_message(stream_id, stream, message, framed=True)
        if self._streams.pop(stream_id, None) is not None:
            self._write(_frame(_HEADERS, _END_HEADERS | _END_STREAM, stream_id, trailers))

    async def _send_message(self, stream_id: int, stream: _Stream, item: bytes, framed: bool = False) -> None:
        """Send one message on a stream, waiting for the client's windows when they are short."""
        pending = item if framed else b"\x00" + len(item).to_bytes(4, "big") + item
        out: list[bytes] = []
        if not stream.headers_sent:
            stream.headers_sent = True
            out.append(_frame(_HEADERS, _END_HEADERS, stream_id, _RESPONSE_HEADERS))
        while pending:
            if self._streams.get(stream_id) is not stream:
                raise asyncio.CancelledError()  # reset by the client or the connection is gone
            size = min(len(pending), self._max_frame, self._send_window, stream.send_window)
            if size <= 0:
                if out:
                    self._write(b"".join(out))
                    out = []
                stream.window_open = stream.window_open or asyncio.Event()
                stream.window_open.clear()
                await stream.window_open.wait()
                continue
            out.append(_frame(_DATA, 0, stream_id, pending[:size]))
            pending = pending[size:]
            self._send_window -= size
            stream.send_window -= size
        if out:
            self._write(b"".join(out))

    def _end(
        self,
        stream_id: int,
        stream: _Stream,
        code: grpc.StatusCode,
        details: str,
        metadata: Sequence[tuple[str, str | bytes]],
    ) -> None:
        if self._streams.pop(stream_id, None) is None:
            return
        trailers = _trailers(code, details, metadata)
        if stream.headers_sent:
            self._write(_frame(_HEADERS, _END_HEADERS | _END_STREAM, stream_id, trailers))
        else:  # trailers-only
            self._write(_frame(_HEADERS, _END_HEADERS | _END_STREAM, stream_id, _RESPONSE_HEADERS + trailers))

    def _refuse(self, stream_id: int, code: grpc.StatusCode, details: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._end(stream_id, stream, code, details, ())
            if not stream.ended:  # stop the rest of the request
                self._write(_frame(_RST_STREAM, 0, stream_id, struct.pack(">L", _NO_ERROR)))

    def _wake(self, stream: _Stream) -> None:
        if stream.window_open is not None:
            stream.window_open.set()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _fail(self, error: int) -> None:
        self._write(_frame(_GOAWAY, 0, 0, struct.pack(">LL", self._last_stream, error)))
        self.close()

    def go_away(self) -> None:
        """No new calls on this connection; the ones open finish."""
        if not self._going_away:
            self._going_away = True
            self._write(_frame(_GOAWAY, 0, 0, struct.pack(">LL", self._last_stream, _NO_ERROR)))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
