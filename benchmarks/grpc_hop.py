"""What one gRPC hop between mesh services costs in Python, before any service logic.

A grpc.aio server in a child process answers the rate-limiter's own messages at once
(a `ShouldRateLimitRequest` with the router's six descriptors in, an OK response out),
over loopback, two ways: a unary call per exchange (how the router asks today) and one
message each way on a long-lived bidirectional stream (the alternative). A grpc.aio client
in this process makes the exchanges one after another. Reported per way: latency p50/p99 of
an exchange, and CPU time per exchange of the client and of the server process, in
alternating rounds so machine noise hits both alike.

    python -m benchmarks.grpc_hop                   # 3 rounds of 5,000 exchanges per way
    python -m benchmarks.grpc_hop --exchanges 2000 --rounds 5 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import time
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from interlock.ratelimit.v1 import ratelimit_pb2

_SERVICE = "interlock.bench.Hop"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 10 ms


async def _serve(port_out: Connection) -> None:
    answer = ratelimit_pb2.ShouldRateLimitResponse(overall_code=ratelimit_pb2.CODE_OK)

    async def unary(
        request: ratelimit_pb2.ShouldRateLimitRequest, context: Any
    ) -> ratelimit_pb2.ShouldRateLimitResponse:
        return answer

    async def stream(
        requests: AsyncIterator[ratelimit_pb2.ShouldRateLimitRequest], context: Any
    ) -> AsyncIterator[ratelimit_pb2.ShouldRateLimitResponse]:
        async for _ in requests:
            yield answer

    request_type, response_type = ratelimit_pb2.ShouldRateLimitRequest, ratelimit_pb2.ShouldRateLimitResponse
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString
        ),
        "Stream": grpc.stream_stream_rpc_method_handler(
            stream, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString
        ),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(_SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_out.send(port)
    await server.wait_for_termination()


def _server_main(port_out: Connection) -> None:
    asyncio.run(_serve(port_out))


def _request() -> ratelimit_pb2.ShouldRateLimitRequest:
    scopes = [[("api_key", "k1")], [("project", "acme/search")], [("provider", "openai"), ("model", "gpt-4o-mini")]]
    scopes += [[("usage", "tokens"), *s] for s in scopes]
    return ratelimit_pb2.ShouldRateLimitRequest(
        domain="interlock",
        descriptors=[
            ratelimit_pb2.Descriptor(entries=[ratelimit_pb2.Entry(key=k, value=v) for k, v in s], hits_addend=1)
            for s in scopes
        ],
    )


async def _measure(port: int, server_pid: int, exchanges: int, rounds: int) -> dict[str, dict[str, float]]:
    request = _request()
    serialize = ratelimit_pb2.ShouldRateLimitRequest.SerializeToString
    parse = ratelimit_pb2.ShouldRateLimitResponse.FromString
    figures: dict[str, list[dict[str, float]]] = {"unary": [], "stream": []}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary = channel.unary_unary(f"/{_SERVICE}/Unary", request_serializer=serialize, response_deserializer=parse)
        stream = channel.stream_stream(f"/{_SERVICE}/Stream", request_serializer=serialize, response_deserializer=parse)
        call = stream()

        async def via_unary() -> None:
            await unary(request)

        async def via_stream() -> None:
            await call.write(request)
            await call.read()

        ways = {"unary": via_unary, "stream": via_stream}
        for exchange in ways.values():  # connect and warm up
            for _ in range(200):
                await exchange()
        for round_no in range(rounds):
            order = list(ways.items()) if round_no % 2 == 0 else list(ways.items())[::-1]
            for name, exchange in order:
                latencies: list[float] = []
                client_cpu, server_cpu = time.process_time(), _cpu_seconds(server_pid)
                for _ in range(exchanges):
                    start = time.perf_counter()
                    await exchange()
                    latencies.append(time.perf_counter() - start)
                client_cpu = time.process_time() - client_cpu
                server_cpu = _cpu_seconds(server_pid) - server_cpu
                latencies.sort()
                figures[name].append(
                    {
                        "p50_us": 1e6 * latencies[len(latencies) // 2],
                        "p99_us": 1e6 * latencies[int(len(latencies) * 0.99)],
                        "client_cpu_us": 1e6 * client_cpu / exchanges,
                        "server_cpu_us": 1e6 * server_cpu / exchanges,
                    }
                )
        await call.done_writing()
    return {
        name: {key: round(statistics.median(r[key] for r in rows), 1) for key in rows[0]}
        for name, rows in figures.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exchanges", type=int, default=5000, help="exchanges per way per round (5,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    receive, send = multiprocessing.Pipe(duplex=False)
    server = multiprocessing.get_context("spawn").Process(target=_server_main, args=(send,), daemon=True)
    server.start()
    try:
        port = int(receive.recv())
        assert server.pid is not None
        results = asyncio.run(_measure(port, server.pid, args.exchanges, args.rounds))
    finally:
        server.terminate()
        server.join(5)
    if args.json:
        print(json.dumps({"exchanges": args.exchanges, "rounds": args.rounds, "ways": results}, indent=2))
        return 0
    print(f"{args.exchanges} exchanges x {args.rounds} rounds per way; medians over rounds")
    print("| way | p50 us | p99 us | client CPU us | server CPU us |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['p50_us']} | {r['p99_us']} | {r['client_cpu_us']} | {r['server_cpu_us']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
