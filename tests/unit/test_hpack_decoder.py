"""interlock._hpack: the event-loop gRPC transport's HPACK decoder, against RFC 7541's
examples and against the `hpack` package's encoder and decoder over long random sequences
sharing one dynamic table."""

from __future__ import annotations

import random

import pytest
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple

from interlock._hpack import HeaderBlockDecoder, HpackError


def test_rfc7541_c2_1_literal_with_indexing() -> None:
    decoder = HeaderBlockDecoder()
    block = bytes.fromhex("400a637573746f6d2d6b65790d637573746f6d2d686561646572")
    assert decoder.decode(block) == [(b"custom-key", b"custom-header")]
    assert decoder.table == [(b"custom-key", b"custom-header")]
    assert decoder.table_size == 55


def test_rfc7541_c2_2_to_c2_4() -> None:
    decoder = HeaderBlockDecoder()
    assert decoder.decode(bytes.fromhex("040c2f73616d706c652f70617468")) == [(b":path", b"/sample/path")]
    assert decoder.decode(bytes.fromhex("100870617373776f726406736563726574")) == [(b"password", b"secret")]
    assert decoder.decode(bytes.fromhex("82")) == [(b":method", b"GET")]
    assert decoder.table == []  # none of the three is added


def test_rfc7541_c4_requests_with_huffman_share_the_table() -> None:
    decoder = HeaderBlockDecoder()
    first = decoder.decode(bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff"))
    assert first == [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com")]
    second = decoder.decode(bytes.fromhex("828684be5886a8eb10649cbf"))
    assert second[-1] == (b"cache-control", b"no-cache")
    assert second[3] == (b":authority", b"www.example.com")  # index 62: the first block's entry
    assert decoder.table_size == 110


def _random_headers(rng: random.Random) -> list[tuple[bytes, bytes]]:
    names = [b":method", b":path", b"content-type", b"grpc-timeout", b"authorization", b"x-custom", b"te"]
    headers = []
    for _ in range(rng.randint(0, 12)):
        name = rng.choice(names) if rng.random() < 0.7 else bytes(rng.choices(b"abcdefghij-", k=rng.randint(1, 20)))
        value = bytes(rng.choices(range(32, 127), k=rng.choice((0, 1, 5, 30, 200))))
        headers.append((name, value))
    return headers


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_decodes_what_hpack_encodes_as_hpack_decodes_it(seed: int) -> None:
    rng = random.Random(seed)
    encoder, reference, decoder = Encoder(), Decoder(), HeaderBlockDecoder()
    for step in range(2000):
        if rng.random() < 0.03:  # a table size update at the next block's start (evicts entries)
            encoder.header_table_size = rng.choice((0, 64, 256, 1024, 4096))
        headers = _random_headers(rng)
        fields = [NeverIndexedHeaderTuple(n, v) if rng.random() < 0.1 else (n, v) for n, v in headers]
        block = encoder.encode(fields, huffman=rng.random() < 0.5)
        expected = [(bytes(n), bytes(v)) for n, v in reference.decode(block, raw=True)]
        assert decoder.decode(block) == expected == headers, step
        assert decoder.table == [(bytes(n), bytes(v)) for n, v in reference.header_table.dynamic_entries]
        assert decoder.table_size == reference.header_table._current_size


def test_an_entry_larger_than_the_table_empties_it() -> None:
    decoder = HeaderBlockDecoder(table_limit=100)
    decoder.decode(bytes.fromhex("400a637573746f6d2d6b65790d637573746f6d2d686561646572"))
    assert decoder.table_size == 55
    decoder.decode(b"\x40\x01a\x64" + b"v" * 100)  # a: 100 bytes, 133 with the name and 32
    assert decoder.table == [] and decoder.table_size == 0


def test_eviction_keeps_the_newest_entries() -> None:
    decoder = HeaderBlockDecoder(table_limit=100)
    for value in (b"one", b"two", b"three"):  # 32 + 1 + len(value) each: the third evicts the first
        decoder.decode(b"\x40\x01k" + bytes([len(value)]) + value)
    assert decoder.table == [(b"k", b"three"), (b"k", b"two")]
    assert decoder.decode(b"\xbf") == [(b"k", b"two")]  # index 63: the second-newest


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"\x80", "index 0"),
        (b"\xbe", "index 62"),  # the dynamic table is empty
        (b"\xff", "inside an integer"),
        (b"\xff\x80\x80\x80\x80\x80\x01", "too large"),
        (b"\x40\x05ab", "longer than the rest"),
        (b"\x40", "ends before a string"),
        (b"\x3f\xe2\x1f", "past the limit"),  # a size update to 4097
        (b"\x82\x20", "after a header field"),
        (b"\x40\x81\xff\x01a", "Huffman"),  # a name of one Huffman byte that is all padding bits
    ],
)
def test_malformed_blocks_are_errors(block: bytes, message: str) -> None:
    with pytest.raises(HpackError, match=message):
        HeaderBlockDecoder().decode(block)


def test_the_header_list_limit() -> None:
    decoder = HeaderBlockDecoder(max_header_list=100)
    assert decoder.decode(b"\x00\x01a" + b"\x40" + b"v" * 64)[0][1] == b"v" * 64  # 97 bytes
    with pytest.raises(HpackError, match="larger than 100"):
        decoder.decode(b"\x00\x01a" + b"\x44" + b"v" * 68)  # 101 bytes


def test_a_size_update_to_zero_then_back() -> None:
    decoder = HeaderBlockDecoder()
    decoder.decode(bytes.fromhex("400a637573746f6d2d6b65790d637573746f6d2d686561646572"))
    assert decoder.decode(b"\x20\x3f\xe1\x1f\x82") == [(b":method", b"GET")]  # 0, then 4096, then a field
    assert decoder.table == []
