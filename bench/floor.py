"""The least a Python proxy adds on this machine: the bench's floor (`make bench-floor`).

Starts nginx (the same fixed upstream as `make bench`) and, in its own process on uvloop, a
proxy that does nothing but forward: httptools parses the request, the router's HTTP/1.1
client (`http_pool.HttpPool`) sends it to nginx on a kept-alive connection, and the answer
goes back in one write. No auth, limits, budgets, JSON, spans or usage events. A second
proxy does the same behind the HTTP server the router's facade runs on (`interlock._http`,
a bare ASGI app): the difference between the two is what the ASGI server layer costs. A third
runs the same ASGI app on uvicorn's httptools server (what the facade ran on before
`interlock._http` served it itself). A fourth serves the router's gRPC `Chat` method on a
bare grpc.aio server set up as the services' (`interlock._server`: gRPC core's experiments,
`SERVER_OPTIONS`): it leaves the request unread, sends nginx the same OpenAI body the HTTP
paths send, and answers with an empty `ChatResponse`, which is what the Python gRPC
transport costs a gateway before it does any work. A fifth does the same on the router's
event-loop gRPC transport (`interlock._grpc_loop`, which parses HTTP/2 in the event loop),
without grpc.aio's hand-offs between gRPC core's poller thread and the loop. Then, at each
rate, vegeta (ghz for the gRPC proxies, with the request `make bench` sends) drives nginx
directly and through every proxy in alternating rounds, and the report gives the added
latency percentiles as `make bench` does (a path's percentile minus the direct path's).

    python -m bench.floor                          # 100 and 1,000 calls/s, 3 rounds of 10 s
    python -m bench.floor --rates 10,100 --json

What the router adds beyond this floor is its own work: docs/BENCHMARKS.md compares the two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from interlock._server import GRPC_EXPERIMENTS
from interlock.devservers import free_port

from .gateways import NginxUpstream
from .load import Endpoint, http_body, run_once
from .stats import percentile
from .tools import find_tools, stop_on_sigterm

_PATH = "/unary/v1/chat/completions"
_MODEL = "gpt-4o-mini"
_PROXIES = {
    "floor": "",
    "floor_asgi": "_asgi",
    "floor_uvicorn": "_uvicorn",
    "floor_grpc": "_grpc",
    "floor_grpc_loop": "_grpc_loop",
}
_GRPC_PROXIES = ("floor_grpc", "floor_grpc_loop")
_CHAT_PATH = "/interlock.router.v1.RouterService/Chat"
"""Each proxy path and the suffix of its `added*` figures in the results."""


def _serve(port: int, upstream_url: str) -> None:
    """The forwarding proxy (runs in a child process until killed)."""
    import httptools
    import uvloop

    from interlock.services.router.adapters.http_pool import HttpPool

    async def main() -> None:
        pool = HttpPool(upstream_url, max_connections=256, connect_timeout_s=5.0)
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()

        class Forward(asyncio.Protocol):
            def __init__(self) -> None:
                self.parser = httptools.HttpRequestParser(self)
                self.body: list[bytes] = []
                self.transport: asyncio.Transport | None = None

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport  # type: ignore[assignment]

            def data_received(self, data: bytes) -> None:
                self.parser.feed_data(data)

            def on_body(self, body: bytes) -> None:
                self.body.append(body)

            def on_message_complete(self) -> None:
                body, self.body = b"".join(self.body), []
                task = loop.create_task(self.forward(body))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            async def forward(self, body: bytes) -> None:
                response = await pool.request("POST", _PATH, {"content-type": "application/json"}, body)
                try:
                    answer = await response.read()
                finally:
                    response.release()
                head = b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                assert self.transport is not None
                self.transport.write(head % (response.status, len(answer)) + answer)

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        server = await loop.create_server(Forward, sock=sock, backlog=4096)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def _serve_asgi(port: int, upstream_url: str, server: str = "interlock") -> None:
    """The same forwarding as a bare ASGI app behind the facade's HTTP server (`interlock`) or
    uvicorn's httptools server (`uvicorn`); runs until killed."""
    import uvloop

    from interlock._http import EmbeddedHttpServer
    from interlock.services.router.adapters.http_pool import HttpPool

    async def main() -> None:
        pool = HttpPool(upstream_url, max_connections=256, connect_timeout_s=5.0)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            response = await pool.request("POST", _PATH, {"content-type": "application/json"}, body)
            try:
                answer = await response.read()
            finally:
                response.release()
            headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            await send({"type": "http.response.body", "body": answer})

        if server == "interlock":
            await EmbeddedHttpServer(app, port=port).start()
            await asyncio.Event().wait()
            return
        import uvicorn  # a dev dependency: only this comparison uses it

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        config = uvicorn.Config(
            app, http="httptools", lifespan="off", log_config=None, access_log=False, proxy_headers=False
        )
        await uvicorn.Server(config).serve(sockets=[sock])

    uvloop.run(main())


def _serve_grpc(port: int, upstream_url: str, transport: str = "grpc.aio") -> None:
    """The same forwarding behind a bare gRPC server answering the router's `Chat` method
    (runs until killed): grpc.aio set up as the services' (gRPC core's experiments come from
    the environment, set by `main`), or (`transport="loop"`) the router's event-loop transport,
    `interlock._grpc_loop`."""
    import grpc
    import uvloop

    from interlock._grpc_loop import LoopGrpcServer
    from interlock._server import MAX_MESSAGE_BYTES, SERVER_OPTIONS
    from interlock.services.router.adapters.http_pool import HttpPool

    body = json.dumps(http_body(_MODEL, False)).encode()

    async def main() -> None:
        pool = HttpPool(upstream_url, max_connections=256, connect_timeout_s=5.0)

        async def chat(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            response = await pool.request("POST", _PATH, {"content-type": "application/json"}, body)
            try:
                await response.read()
            finally:
                response.release()
            return b""  # an empty ChatResponse

        handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(chat)
        if transport == "loop":
            await LoopGrpcServer({_CHAT_PATH: handler}, MAX_MESSAGE_BYTES).start("127.0.0.1", port)
            await asyncio.Event().wait()
        server = grpc.aio.server(options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("interlock.router.v1.RouterService", {"Chat": handler}),)
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


def _wait_listening(port: int, proxy: multiprocessing.process.BaseProcess) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or not proxy.is_alive():
                raise RuntimeError("a floor proxy did not start") from None
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="100,1000", help="requests per second, comma-separated (100,1000)")
    parser.add_argument("--seconds", type=float, default=10, help="length of one round (10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per path and rate (3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    tools = find_tools(need_litellm=False)
    work = Path(tempfile.mkdtemp(prefix="interlock-bench-floor-"))
    upstream = NginxUpstream(work / "nginx", tools.nginx).start()
    # The gRPC proxy's child imports gRPC core with the services' settings (read on import).
    os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
    spawn = multiprocessing.get_context("spawn")
    ports = {name: free_port() for name in _PROXIES}
    proxies = {
        "floor": spawn.Process(target=_serve, args=(ports["floor"], upstream.url), daemon=True),
        "floor_asgi": spawn.Process(
            target=_serve_asgi, args=(ports["floor_asgi"], upstream.url, "interlock"), daemon=True
        ),
        "floor_uvicorn": spawn.Process(
            target=_serve_asgi, args=(ports["floor_uvicorn"], upstream.url, "uvicorn"), daemon=True
        ),
        "floor_grpc": spawn.Process(target=_serve_grpc, args=(ports["floor_grpc"], upstream.url), daemon=True),
        "floor_grpc_loop": spawn.Process(
            target=_serve_grpc, args=(ports["floor_grpc_loop"], upstream.url, "loop"), daemon=True
        ),
    }
    for process in proxies.values():
        process.start()
    rows = []
    try:
        for name, process in proxies.items():
            _wait_listening(ports[name], process)
        direct = Endpoint("direct", "upstream", False, "", url=f"{upstream.url}{_PATH}", model=_MODEL)
        paths = (
            direct,
            *(
                Endpoint(name, "floor", False, "direct", url=f"http://127.0.0.1:{ports[name]}/", model=_MODEL)
                for name in _PROXIES
                if name not in _GRPC_PROXIES
            ),
            *(
                Endpoint(
                    name,
                    "floor",
                    False,
                    "direct",
                    grpc_target=f"127.0.0.1:{ports[name]}",
                    headers={"authorization": "Bearer floor"},
                    model=_MODEL,
                )
                for name in _GRPC_PROXIES
            ),
        )
        for endpoint in paths:
            run_once(tools, endpoint, 50, 2, work)  # warm connections on every path
        for rate in rates:
            latencies: dict[str, list[float]] = {e.name: [] for e in paths}
            errors = {e.name: 0 for e in paths}
            for round_no in range(args.rounds):
                order = paths if round_no % 2 == 0 else paths[::-1]
                for endpoint in order:
                    print(f"floor: {rate:g}/s round {round_no + 1}/{args.rounds}: {endpoint.name}", file=sys.stderr)
                    result = run_once(tools, endpoint, rate, args.seconds, work)
                    latencies[endpoint.name] += result.latencies_ms
                    errors[endpoint.name] += result.errors
            row: dict[str, float] = {"rate": rate} | {f"errors_{name}": n for name, n in errors.items()}
            for p in (50, 90, 99):
                d = percentile(latencies["direct"], p)
                row[f"direct_p{p}_ms"] = round(d, 3)
                for name, suffix in _PROXIES.items():
                    through = percentile(latencies[name], p)
                    row[f"{name}_p{p}_ms"] = round(through, 3)
                    row[f"added{suffix}_p{p}_ms"] = round(through - d, 3)
            rows.append(row)
    finally:
        for process in proxies.values():
            process.kill()
            process.join(5)
        upstream.stop()
    if args.json:
        print(json.dumps({"rates": rates, "seconds": args.seconds, "rounds": args.rounds, "rows": rows}, indent=2))
    else:
        print(
            "| rate | direct p50 / p99 ms | added p50 / p90 / p99 ms: httptools proxy "
            "| behind the facade's HTTP server | behind uvicorn | behind grpc.aio (ghz) "
            "| behind the event-loop gRPC transport (ghz) | errors |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            added = " | ".join(
                f"{r[f'added{s}_p50_ms']:.2f} / {r[f'added{s}_p90_ms']:.2f} / {r[f'added{s}_p99_ms']:.2f}"
                for s in _PROXIES.values()
            )
            print(
                f"| {r['rate']:,.0f}/s | {r['direct_p50_ms']:.2f} / {r['direct_p99_ms']:.2f} | {added} "
                f"| {sum(n for k, n in r.items() if k.startswith('errors_')):.0f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
