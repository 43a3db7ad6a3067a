"""HPACK header-block decoding (RFC 7541) for the event-loop gRPC transport.

`interlock._grpc_loop` decodes one header block per call. The `hpack` package's decoder
makes two tuple objects and a debug-log call for each field and recomputes table sizes as it
goes: about 200 Python calls for a gRPC request's nine fields, and 73% of the transport's
`data_received` under a profiler. This decoder keeps the same rules (the static and dynamic
tables, table size updates only at a block's start and within the limit, the header list
limit, every malformed block an error) in one loop over the block's bytes and returns plain
`(name, value)` byte pairs: 3.9 us a block where `hpack` took 14.4 (`make bench-grpc-parse`,
round 17 in docs/BENCHMARKS-history.md). Huffman-coded strings and the static table come
from `hpack`.
"""

from __future__ import annotations

from collections import deque

from hpack import HPACKError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

_STATIC: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE
_STATIC_COUNT = len(_STATIC)
ENTRY_OVERHEAD = 32
"""Bytes counted for each table entry (and header list field) beyond its name and value."""
DEFAULT_TABLE_SIZE = 4096
"""SETTINGS_HEADER_TABLE_SIZE's default, the most a peer's size update may ask for."""
DEFAULT_MAX_HEADER_LIST = 65536
"""The most a header block may decode to (names, values and 32 a field)."""


class HpackError(ValueError):
    """A header block that is not valid HPACK: the connection's COMPRESSION_ERROR."""


def _integer(block: bytes, pos: int, value: int) -> tuple[int, int]:
    """The rest of an integer whose prefix was full (`value`), from `pos`; (value, next pos)."""
    shift = 0
    end = len(block)
    while True:
        if pos >= end:
            raise HpackError("header block ends inside an integer")
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise HpackError("integer in header block too large")


def _string(block: bytes, pos: int) -> tuple[bytes, int]:
    """A string literal at `pos`; (its bytes, Huffman-decoded if coded, next pos)."""
    if pos >= len(block):
        raise HpackError("header block ends before a string")
    first = block[pos]
    length = first & 0x7F
    pos += 1
    if length == 0x7F:
        length, pos = _integer(block, pos, length)
    end = pos + length
    if end > len(block):
        raise HpackError("string longer than the rest of the header block")
    data = block[pos:end]
    if first & 0x80:
        try:
            data = decode_huffman(data)
        except HPACKError as exc:
            raise HpackError(f"invalid Huffman-coded string: {exc}") from None
    return data, end


class HeaderBlockDecoder:
    """One connection's decoding context: its dynamic table, kept across header blocks."""

    __slots__ = ("_dynamic", "_limit", "_max_list", "_max_size", "_size")

    def __init__(self, table_limit: int = DEFAULT_TABLE_SIZE, max_header_list: int = DEFAULT_MAX_HEADER_LIST) -> None:
        self._dynamic: deque[tuple[bytes, bytes]] = deque()
        self._size = 0
        self._limit = table_limit
        self._max_size = table_limit
        self._max_list = max_header_list

    @property
    def table(self) -> list[tuple[bytes, bytes]]:
        """The dynamic table, newest entry first."""
        return list(self._dynamic)

    @property
    def table_size(self) -> int:
        """The dynamic table's size as RFC 7541 counts it (name, value and 32 an entry)."""
        return self._size

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The (name, value) fields of one complete header block, in order."""
        fields: list[tuple[bytes, bytes]] = []
        dynamic = self._dynamic
        listed = 0
        pos = 0
        end = len(block)
        while pos < end:
            first = block[pos]
            pos += 1
            if first & 0x80:  # indexed field
                index = first & 0x7F
                if index == 0x7F:
                    index, pos = _integer(block, pos, index)
                # The common case inline: a field the client indexed in the dynamic table.
                offset = index - _STATIC_COUNT - 1
                field = dynamic[offset] if 0 <= offset < len(dynamic) else self._entry(index)
            elif first & 0x40:  # literal, added to the table
                index = first & 0x3F
                if index == 0x3F:
                    index, pos = _integer(block, pos, index)
                field, pos = self._literal(block, pos, index)
                self._add(field)
            elif first & 0x20:  # dynamic table size update
                size = first & 0x1F
                if size == 0x1F:
                    size, pos = _integer(block, pos, size)
                if fields:
                    raise HpackError("table size update after a header field")
                if size > self._limit:
                    raise HpackError(f"table size update to {size}, past the limit of {self._limit}")
                self._max_size = size
                self._evict(0)
                continue
            else:  # literal not added (0000) or never to be added (0001)
                index = first & 0x0F
                if index == 0x0F:
                    index, pos = _integer(block, pos, index)
                field, pos = self._literal(block, pos, index)
            listed += len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
            if listed > self._max_list:
                raise HpackError(f"header list larger than {self._max_list} bytes")
            fields.append(field)
        return fields

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_COUNT:
            return _STATIC[index - 1]
        offset = index - _STATIC_COUNT - 1
        if index == 0 or offset >= len(self._dynamic):
            raise HpackError(f"header index {index} not in the tables")
        return self._dynamic[offset]

    def _literal(self, block: bytes, pos: int, index: int) -> tuple[tuple[bytes, bytes], int]:
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = _string(block, pos)
        value, pos = _string(block, pos)
        return (name, value), pos

    def _add(self, field: tuple[bytes, bytes]) -> None:
        size = len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
        if size > self._max_size:  # larger than the table: it empties it (RFC 7541, 4.4)
            self._dynamic.clear()
            self._size = 0
            return
        self._evict(size)
        self._dynamic.appendleft(field)
        self._size += size

    def _evict(self, room: int) -> None:
        """Drop the oldest entries until `room` more bytes fit."""
        dynamic = self._dynamic
        while self._size + room > self._max_size and dynamic:
            name, value = dynamic.pop()
            self._size -= len(name) + len(value) + ENTRY_OVERHEAD
