"""A minimal gRPC server that runs on the event loop: `make bench-floor`'s measure of what a
Python gRPC transport needs to cost.

grpc.aio hands every event of a call (its arrival, its message, the answer sent) from gRPC
core's completion-queue poller thread to the event loop through a socket, and each is a
wake-up; grpclib does the HTTP/2 work on the loop but through h2's general state machine. This
server parses HTTP/2 frames itself in `data_received` (HPACK header blocks by `hpack`), runs
the method when the request's last frame arrives, and writes the answer's headers, message and
trailers in one write: one wake-up for the request and whatever the method awaits.

It serves unary methods with small messages and is a measuring instrument, not a server to
deploy: no TLS, no compression, no deadlines or cancellation, no graceful shutdown, one method
table of raw-bytes handlers. It does keep HTTP/2's rules a client checks: the connection
preface, SETTINGS and their acknowledgement, PING answers, and flow control in both
directions (receive windows advertised large and topped up; answers wait for the client's
send windows).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable, Mapping

from hpack import Decoder

Method = Callable[[bytes], Awaitable[bytes]]
"""A unary method: the request message's bytes in, the answer message's bytes out."""

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
_END_STREAM = _ACK = 0x1
_END_HEADERS, _PADDED, _PRIORITY = 0x4, 0x8, 0x20
_SETTINGS_INITIAL_WINDOW_SIZE = 0x4
_MAX_FRAME = 16_384
"""The largest frame a peer must accept before it says otherwise (sent frames stay within it)."""
_RECEIVE_WINDOW = 1 << 30
"""The receive window advertised for the connection and for each stream."""
_HEADER = struct.Struct(">BHBBL")  # length (24 bits as 8 + 16), type, flags, stream id

# HPACK without the dynamic table, so the encoder keeps no state: `:status: 200` is entry 8 of
# the static table; `content-type` (static name 31) and `grpc-status` are literals that are
# not indexed (RFC 7541, 6.1 and 6.2.2).
_RESPONSE_HEADERS = b"\x88" + b"\x0f\x10" + bytes([16]) + b"application/grpc"
_TRAILERS_OK = b"\x00" + bytes([11]) + b"grpc-status" + b"\x01" + b"0"
_UNIMPLEMENTED = b"\x00" + bytes([11]) + b"grpc-status" + b"\x02" + b"12"
_INTERNAL = b"\x00" + bytes([11]) + b"grpc-status" + b"\x02" + b"13"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    n = len(payload)
    return _HEADER.pack(n >> 16, n & 0xFFFF, kind, flags, stream) + payload


class _Stream:
    __slots__ = ("block", "data", "ended", "path", "pending", "send_window")

    def __init__(self, block: bytes, send_window: int) -> None:
        self.block = block
        self.data: list[bytes] = []
        self.path = b""
        self.ended = False
        self.send_window = send_window
        self.pending = b""  # the answer's bytes not yet sent


class GrpcLoopConnection(asyncio.Protocol):
    """One client connection: frames parsed as they arrive, a task per call."""

    def __init__(self, methods: Mapping[str, Method]) -> None:
        self._methods = {path.encode(): method for path, method in methods.items()}
        self._buffer = b""
        self._preface_seen = False
        self._decoder = Decoder()
        self._streams: dict[int, _Stream] = {}
        self._received = 0
        self._send_window = 65_535  # the connection's, until the client's WINDOW_UPDATEs
        self._initial_stream_window = 65_535  # until the client's SETTINGS say otherwise
        self._waiting: list[int] = []  # streams whose answers wait for flow control
        self._tasks: set[asyncio.Task[None]] = set()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass
        settings = struct.pack(">HL", _SETTINGS_INITIAL_WINDOW_SIZE, _RECEIVE_WINDOW)
        window = struct.pack(">L", _RECEIVE_WINDOW - 65_535)
        self._write(frame(_SETTINGS, 0, 0, settings) + frame(_WINDOW_UPDATE, 0, 0, window))

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self._tasks:
            task.cancel()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        pos = 0
        if not self._preface_seen:
            if len(buffer) < len(PREFACE):
                self._buffer = buffer
                return
            if not buffer.startswith(PREFACE):
                self._close(1)  # PROTOCOL_ERROR
                return
            self._preface_seen = True
            pos = len(PREFACE)
        replies: list[bytes] = []
        end = len(buffer)
        while end - pos >= 9:
            high, low, kind, flags, stream_id = _HEADER.unpack_from(buffer, pos)
            length = (high << 16) | low
            if end - pos - 9 < length:
                break
            payload = buffer[pos + 9 : pos + 9 + length]
            pos += 9 + length
            stream_id &= 0x7FFF_FFFF
            if kind == _HEADERS:
                self._on_headers(stream_id, flags, payload)
            elif kind == _CONTINUATION:
                stream = self._streams.get(stream_id)
                if stream is not None:
                    stream.block += payload
                    if flags & _END_HEADERS:
                        self._on_header_block(stream_id, stream)
            elif kind == _DATA:
                self._received += length
                stream = self._streams.get(stream_id)
                if stream is not None:
                    if flags & _PADDED:
                        payload = payload[1 : len(payload) - payload[0]]
                    stream.data.append(payload)
                    if flags & _END_STREAM:
                        stream.ended = True
                        self._dispatch(stream_id, stream)
            elif kind == _SETTINGS:
                if not flags & _ACK:
                    self._on_settings(payload)
                    replies.append(frame(_SETTINGS, _ACK, 0))
            elif kind == _PING:
                if not flags & _ACK:
                    replies.append(frame(_PING, _ACK, 0, payload))
            elif kind == _WINDOW_UPDATE:
                (increment,) = struct.unpack(">L", payload)
                self._on_window_update(stream_id, increment & 0x7FFF_FFFF)
            elif kind == _RST_STREAM:
                self._streams.pop(stream_id, None)
            elif kind == _GOAWAY:
                pass  # the client stops opening streams; the ones open finish
        if self._received > _RECEIVE_WINDOW // 2:
            # Give the connection's window back; a stream's own is never short (one request each).
            replies.append(frame(_WINDOW_UPDATE, 0, 0, struct.pack(">L", self._received)))
            self._received = 0
        self._buffer = buffer[pos:]
        if replies and self._transport is not None:
            self._transport.write(b"".join(replies))
        if self._waiting:
            self._send_waiting()

    def _on_headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if flags & _PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        if flags & _PRIORITY:
            payload = payload[5:]
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers from the client
            stream.ended = bool(flags & _END_STREAM)
            return
        stream = self._streams[stream_id] = _Stream(payload, self._initial_stream_window)
        stream.ended = bool(flags & _END_STREAM)
        if flags & _END_HEADERS:
            self._on_header_block(stream_id, stream)

    def _on_header_block(self, stream_id: int, stream: _Stream) -> None:
        for name, value in self._decoder.decode(stream.block, raw=True):
            if name == b":path":
                stream.path = value
                break
        stream.block = b""
        if stream.ended:
            self._dispatch(stream_id, stream)

    def _on_settings(self, payload: bytes) -> None:
        for offset in range(0, len(payload) - 5, 6):
            key, value = struct.unpack_from(">HL", payload, offset)
            if key == _SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self._initial_stream_window
                self._initial_stream_window = value
                for stream in self._streams.values():
                    stream.send_window += delta

    def _on_window_update(self, stream_id: int, increment: int) -> None:
        if stream_id == 0:
            self._send_window += increment
        elif (stream := self._streams.get(stream_id)) is not None:
            stream.send_window += increment

    def _dispatch(self, stream_id: int, stream: _Stream) -> None:
        data = b"".join(stream.data)
        task = asyncio.get_running_loop().create_task(self._call(stream_id, stream, data[5:]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, stream_id: int, stream: _Stream, message: bytes) -> None:
        method = self._methods.get(stream.path)
        if method is None:
            self._streams.pop(stream_id, None)
            self._write(frame(_HEADERS, _END_HEADERS | _END_STREAM, stream_id, _RESPONSE_HEADERS + _UNIMPLEMENTED))
            return
        try:
            answer = await method(message)
        except Exception:  # noqa: BLE001 - any failure of the method is its call's INTERNAL status
            self._streams.pop(stream_id, None)
            self._write(frame(_HEADERS, _END_HEADERS | _END_STREAM, stream_id, _RESPONSE_HEADERS + _INTERNAL))
            return
        self._answer(stream_id, b"\x00" + struct.pack(">L", len(answer)) + answer)

    def _answer(self, stream_id: int, message: bytes) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:  # reset by the client meanwhile
            return
        stream.pending = message
        self._write(frame(_HEADERS, _END_HEADERS, stream_id, _RESPONSE_HEADERS) + self._flush(stream_id, stream))

    def _flush(self, stream_id: int, stream: _Stream) -> bytes:
        """As much of the stream's answer as the send windows allow, in frames the client's
        default frame size takes, then (once all sent) its trailers."""
        out: list[bytes] = []
        pending = stream.pending
        while pending:
            size = min(len(pending), _MAX_FRAME, self._send_window, stream.send_window)
            if size <= 0:
                break
            out.append(frame(_DATA, 0, stream_id, pending[:size]))
            pending = pending[size:]
            self._send_window -= size
            stream.send_window -= size
        if pending:
            stream.pending = pending
            self._waiting.append(stream_id)
        else:
            del self._streams[stream_id]
            out.append(frame(_HEADERS, _END_HEADERS | _END_STREAM, stream_id, _TRAILERS_OK))
        return b"".join(out)

    def _send_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        out = [self._flush(stream_id, stream) for stream_id in waiting if (stream := self._streams.get(stream_id))]
        if out:
            self._write(b"".join(out))

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close(self, error: int) -> None:
        if self._transport is not None:
            self._transport.write(frame(_GOAWAY, 0, 0, struct.pack(">LL", 0, error)))
            self._transport.close()


async def serve(host: str, port: int, methods: Mapping[str, Method]) -> asyncio.Server:
    """Listen on `host:port` and answer `methods` (by path, `/package.Service/Method`)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: GrpcLoopConnection(methods), host, port, backlog=4096)
