"""What the event-loop gRPC transport spends reading one request, in-process and warm.

Feeds `interlock._grpc_loop`'s connection the frames of unary requests (a HEADERS frame
whose block Go's and `hpack`'s encoders write alike once the table holds the fixed fields:
every field indexed but a new `grpc-timeout` value, then the request's DATA frame), as one
`data_received` each, on uvloop, and times that call: frames parsed, the header block
decoded, the context made and the handler's task started (the handler answers at once).
Also times decoding the same header blocks alone with `hpack`'s decoder and with
interlock._hpack's. Rounds alternate the two decoders; medians over rounds are printed.

    make bench-grpc-parse                          # 5 rounds of 5,000 requests
    python -m benchmarks.grpc_parse --requests 20000 --rounds 3 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from typing import Any

import grpc
import uvloop
from hpack import Decoder, Encoder

from interlock import _grpc_loop
from interlock._hpack import HeaderBlockDecoder

PATH = "/interlock.router.v1.RouterService/Chat"
MESSAGE = b"\n\x40" + b"x" * 64


def header_blocks(count: int) -> list[bytes]:
    """`count` request header blocks from one encoder, as a client's connection sends them."""
    encoder = Encoder()
    blocks = []
    for i in range(count):
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", PATH.encode()),
            (b":authority", b"127.0.0.1:50055"),
            (b"content-type", b"application/grpc"),
            (b"user-agent", b"grpc-go/1.59.0"),
            (b"te", b"trailers"),
            (b"grpc-timeout", f"{9_999_000 - i}u".encode()),
            (b"authorization", b"Bearer ik_bench_0123456789abcdef0123456789abcdef"),
        ]
        blocks.append(encoder.encode(headers))
    return blocks


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def close(self) -> None:
        pass


async def _answer(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return b""


async def transport_round(blocks: list[bytes]) -> float:
    """Median microseconds of one request's `data_received` over `blocks`."""
    server = _grpc_loop.LoopGrpcServer({PATH: grpc.unary_unary_rpc_method_handler(_answer)}, 1 << 20)
    connection = _grpc_loop._Connection(server)
    connection.connection_made(_Transport())  # type: ignore[arg-type]
    frame = _grpc_loop._frame  # the transport's own frame writer
    connection.data_received(_grpc_loop.PREFACE + frame(_grpc_loop._SETTINGS, 0, 0, b""))
    body = b"\x00" + len(MESSAGE).to_bytes(4, "big") + MESSAGE
    requests = [
        frame(_grpc_loop._HEADERS, _grpc_loop._END_HEADERS, 2 * i + 1, block)
        + frame(_grpc_loop._DATA, _grpc_loop._END_STREAM, 2 * i + 1, body)
        for i, block in enumerate(blocks)
    ]
    times = []
    for data in requests:
        start = time.perf_counter_ns()
        connection.data_received(data)
        times.append(time.perf_counter_ns() - start)
        await asyncio.sleep(0)  # the handler's task runs and answers
    return statistics.median(times) / 1000


def decode_round(blocks: list[bytes], which: str) -> float:
    """Mean microseconds to decode one of `blocks` (in order, one table) with `which` decoder."""
    if which == "hpack":
        reference = Decoder()
        start = time.perf_counter_ns()
        for block in blocks:
            reference.decode(block, raw=True)
    else:
        ours = HeaderBlockDecoder()
        start = time.perf_counter_ns()
        for block in blocks:
            ours.decode(block)
    return (time.perf_counter_ns() - start) / len(blocks) / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests a round (default 5000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.rounds < 1:
        parser.error("--requests and --rounds must be at least 1")
    blocks = header_blocks(args.requests)
    rounds: dict[str, list[float]] = {"data_received_us": [], "decode_us.hpack": [], "decode_us.interlock": []}
    for n in range(args.rounds):
        rounds["data_received_us"].append(uvloop.run(transport_round(blocks)))
        for which in ("hpack", "interlock") if n % 2 == 0 else ("interlock", "hpack"):
            rounds[f"decode_us.{which}"].append(decode_round(blocks, which))
        if not args.json:
            print(f"grpc-parse: round {n + 1}/{args.rounds} done", file=sys.stderr)
    result = {
        "requests": args.requests,
        "rounds": args.rounds,
        "python": platform.python_version(),
        "median": {k: round(statistics.median(v), 2) for k, v in rounds.items()},
        "per_round": {k: [round(x, 2) for x in v] for k, v in rounds.items()},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        median = result["median"]
        print(f"one request's data_received: {median['data_received_us']} us (median of round medians)")
        hpack_us, ours_us = median["decode_us.hpack"], median["decode_us.interlock"]
        print(f"header block decode: hpack {hpack_us} us, interlock._hpack {ours_us} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
