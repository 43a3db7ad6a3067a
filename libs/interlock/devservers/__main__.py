"""Run one dev server in the foreground, or warm the Kafka jar and Jaeger binary cache.

    python -m interlock.devservers kafka      [--port 9092] [--data DIR] [--json]
    python -m interlock.devservers clickhouse [--http-port 8123] [--tcp-port N] [--data DIR] [--json]
    python -m interlock.devservers redis      [--port 6379] [--data DIR] [--json]
    python -m interlock.devservers jaeger     [--port 16686] [--otlp-port 4317] [--data DIR] [--json]
    python -m interlock.devservers fetch      [--cache DIR] [--only kafka|jaeger] [--json]

A server prints its address on stdout once it answers (a JSON object with --json)
and runs until SIGTERM or SIGINT. Port 0 picks a free port. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from interlock.devservers._ports import free_port
from interlock.devservers._process import DevServerError, ManagedProcess, log_tail, progress
from interlock.devservers.clickhouse import serve_clickhouse
from interlock.devservers.jaeger import JAEGER_VERSION, JaegerServer, ensure_jaeger_binary
from interlock.devservers.kafka import KAFKA_VERSION, KafkaBroker, default_cache_dir, ensure_kafka_classpath
from interlock.devservers.redis import RedisServer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m interlock.devservers", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def server(name: str, port: int, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        flags = ["--http-port", "--port"] if name == "clickhouse" else ["--port"]
        p.add_argument(*flags, dest="port", type=int, default=port, help=f"listen port (default {port}; 0: any free)")
        p.add_argument("--data", type=Path, default=Path("var/devservers") / name, help="data folder")
        p.add_argument("--json", action="store_true", help="print the ready line as JSON")
        return p

    kafka = server("kafka", 9092, "single-node KRaft Kafka broker")
    kafka.add_argument("--controller-port", type=int, default=0, help="KRaft controller port (default: any free)")
    kafka.add_argument("--partitions", type=int, default=1, help="default partitions for new topics")
    kafka.add_argument("--cache", type=Path, default=None, help="jar cache (default $INTERLOCK_CACHE)")
    clickhouse = server("clickhouse", 8123, "ClickHouse HTTP server from chdb")
    clickhouse.add_argument("--tcp-port", type=int, default=0, help="also serve the native protocol here")
    server("redis", 6379, "redis-server without persistence")
    jaeger = server("jaeger", 16686, "Jaeger v2 all-in-one (memory storage); --port is its query API and UI")
    jaeger.add_argument("--otlp-port", type=int, default=4317, help="OTLP/gRPC receiver port (0: any free)")
    jaeger.add_argument("--cache", type=Path, default=None, help="binary cache (default $INTERLOCK_CACHE)")

    fetch = sub.add_parser(
        "fetch", help="resolve the Kafka jars and build Jaeger into the cache (for CI warm-up; long on first run)"
    )
    fetch.add_argument("--cache", type=Path, default=None, help="cache (default $INTERLOCK_CACHE)")
    fetch.add_argument("--only", choices=("kafka", "jaeger"), default=None, help="warm only this one")
    fetch.add_argument("--kafka-version", default=KAFKA_VERSION)
    fetch.add_argument("--jaeger-version", default=JAEGER_VERSION)
    fetch.add_argument("--json", action="store_true")
    return parser


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _announce(as_json: bool, service: str, address: str, **extra: Any) -> None:
    if as_json:
        print(json.dumps({"service": service, "address": address, **extra}), flush=True)
    else:
        print(address, flush=True)


def _run_child(server: ManagedProcess, address: str, args: argparse.Namespace, **extra: Any) -> int:
    stop = _stop_event()
    progress(f"starting {server.name} in {server.data_dir} ...")
    with server:
        _announce(
            args.json,
            server.name,
            address,
            pid=server.pid,
            data_dir=str(server.data_dir),
            log=str(server.log_path),
            **extra,
        )
        server.wait(poll=stop.is_set)
        if stop.is_set():
            return 0
        progress(f"{server.name} exited on its own; log {server.log_path}:\n{log_tail(server.log_path)}")
        return 1


def _run_clickhouse(args: argparse.Namespace) -> int:
    stop = _stop_event()
    port = args.port or free_port()
    data = Path(args.data).resolve()
    progress(f"starting clickhouse in {data} ...")

    def ready() -> None:
        _announce(args.json, "clickhouse", f"http://127.0.0.1:{port}", pid=os.getpid(), data_dir=str(data))

    return serve_clickhouse(data, port, args.tcp_port or None, stop=stop, on_ready=ready)


def _fetch(args: argparse.Namespace) -> int:
    found: dict[str, Any] = {}
    if args.only in (None, "kafka"):
        jars = ensure_kafka_classpath(args.cache, args.kafka_version)
        found.update(kafka_version=args.kafka_version, lib_dir=str(jars[0].parent), jars=[j.name for j in jars])
    if args.only in (None, "jaeger"):
        binary = ensure_jaeger_binary(args.cache, args.jaeger_version)
        found.update(jaeger_version=args.jaeger_version, jaeger_binary=str(binary))
    if args.json:
        print(json.dumps(found))
    else:
        for key in ("lib_dir", "jaeger_binary"):
            if key in found:
                print(found[key])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "fetch":
            return _fetch(args)
        if args.command == "clickhouse":
            return _run_clickhouse(args)
        if args.command == "kafka":
            broker = KafkaBroker(
                args.data,
                args.port or None,
                controller_port=args.controller_port or None,
                partitions=args.partitions,
                cache_dir=args.cache or default_cache_dir(),
            )
            return _run_child(broker, broker.bootstrap, args)
        if args.command == "jaeger":
            jaeger = JaegerServer(args.data, args.otlp_port or None, args.port or None, cache_dir=args.cache)
            return _run_child(jaeger, jaeger.query_url, args, otlp_endpoint=jaeger.otlp_endpoint)
        redis = RedisServer(args.data, args.port or None)
        return _run_child(redis, redis.url, args)
    except DevServerError as exc:
        progress(str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
