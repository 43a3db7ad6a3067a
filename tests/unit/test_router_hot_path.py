"""The router's hot-path shortcuts keep their results: token corrections sent in the
background still land (and close waits for them), cached prompt-token counts equal fresh
ones, the tokenizer is loaded before the router serves (not in its first call), and
orjson-backed JSON reads and writes what the standard module did."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
from router_calls import CALLER, chat_call
from serving import serving

from interlock import _json
from interlock.ratelimit.v1 import ratelimit_pb2
from interlock.services.router.adapters import prompt_tokens
from interlock.services.router.adapters.mesh_clients import RateLimitClient
from interlock.services.router.domain.flow import Admission
from interlock.services.router.domain.provider import ChatMessage, TokenUsage


class HeldLimiter:
    """Stands in for the rate-limiter stub: AdjustHits waits until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.adjusted: list[ratelimit_pb2.AdjustHitsRequest] = []

    async def AdjustHits(self, request: ratelimit_pb2.AdjustHitsRequest, **_: object) -> None:
        await self.release.wait()
        self.adjusted.append(request)


async def test_background_correction_returns_first_and_lands_before_close() -> None:
    client = RateLimitClient("127.0.0.1:9", fail_open=True, correct_in_background=True)
    limiter = HeldLimiter()
    client._stub = limiter  # type: ignore[assignment]
    admission = Admission(True, decided_at_ms=1, token_estimate=130)
    await asyncio.wait_for(client.record_usage(CALLER, chat_call(), admission, TokenUsage(20, 10)), 1.0)
    assert limiter.adjusted == []  # the caller was not held up by the correction
    limiter.release.set()
    await client.aclose()
    assert len(limiter.adjusted) == 1
    request = limiter.adjusted[0]
    assert request.decided_at_unix_ms == 1
    assert [a.delta for a in request.adjustments] == [-100, -100, -100]
    assert all(a.entries[0].key == "usage" for a in request.adjustments)


async def test_correction_is_awaited_by_default() -> None:
    client = RateLimitClient("127.0.0.1:9", fail_open=True)
    limiter = HeldLimiter()
    limiter.release.set()
    client._stub = limiter  # type: ignore[assignment]
    await client.record_usage(
        CALLER, chat_call(), Admission(True, decided_at_ms=1, token_estimate=130), TokenUsage(30, 5)
    )
    assert [a.delta for a in limiter.adjusted[0].adjustments] == [-95, -95, -95]
    await client.aclose()


@pytest.mark.parametrize("size", [1, 300, 20_000])
def test_cached_prompt_token_counts_equal_fresh_ones(size: int) -> None:
    encode = prompt_tokens._cl100k_encode()
    if encode is None:
        pytest.skip("offline tokenizer not installed")
    text = ("Agents resend the same system prompt. " * size)[: size * 7]
    messages = [ChatMessage("system", text), ChatMessage("user", "hi")]
    fresh = 3 + sum(4 + len(encode(m.role)) + len(encode(m.content)) for m in messages)
    assert prompt_tokens.estimate_prompt_tokens(messages) == fresh
    assert prompt_tokens.estimate_prompt_tokens(messages) == fresh  # second time from the cache


@pytest.mark.parametrize(
    "value",
    [
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "héllo ✓ \u2028 \x00"}], "temperature": 0.7},
        {"n": 2**70, "ok": True},  # past 64 bits: the standard encoder writes it
        [1, 2.5, None, "x"],
    ],
)
def test_json_round_trips_like_the_standard_module(value: object) -> None:
    data = _json.dumps(value)
    assert isinstance(data, bytes)
    assert json.loads(data) == value
    assert _json.loads(data) == value


def test_json_is_compact_utf8() -> None:
    assert _json.dumps({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"é"}'.encode()


def test_json_reads_what_only_the_standard_module_accepts() -> None:
    assert math.isnan(_json.loads(b'{"x": NaN}')["x"])
    with pytest.raises(ValueError):
        _json.loads(b"{not json")


def test_the_router_loads_the_tokenizer_before_it_serves(tmp_path: Path) -> None:
    # Loading cl100k's vocabulary takes ~0.1 s; in the first call's path it was that call's wait.
    log_path = tmp_path / "router.log"
    with serving("router", {}, log_path):
        entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    messages = [e["msg"] for e in entries]
    assert "prompt tokens estimated" in messages, messages
    assert messages.index("prompt tokens estimated") < messages.index("serving"), messages
    assert entries[messages.index("prompt tokens estimated")]["by"] == "cl100k"


def test_loading_the_tokenizer_twice_loads_it_once() -> None:
    prompt_tokens._cl100k_encode.cache_clear()
    assert prompt_tokens.load_tokenizer()
    assert prompt_tokens.load_tokenizer()
    info = prompt_tokens._cl100k_encode.cache_info()
    assert (info.misses, info.hits) == (1, 1)
