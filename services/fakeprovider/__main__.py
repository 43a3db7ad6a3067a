"""`python -m interlock.services.fakeprovider --host 127.0.0.1 --port 8089`."""

from __future__ import annotations

import argparse
import asyncio
import logging

from .app import DEFAULT_MODELS
from .server import run_until_signalled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m interlock.services.fakeprovider",
        description="Interlock's fake OpenAI-compatible provider (deterministic answers, fault injection).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089, help="0 picks a free port (printed on stdout)")
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        help="model id listed by GET /v1/models (repeatable)",
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(run_until_signalled(args.host, args.port, tuple(args.models or DEFAULT_MODELS)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
