"""JSON on the router's hot path (provider bodies, the HTTP facade): orjson, same results.

orjson parses and writes several times faster than the standard `json` module. It is
stricter in a few corners, so whatever it refuses goes to the standard module and the
result stays what Interlock produced before: `NaN` and lone surrogates are still read,
integers past 64 bits and non-string keys are still written. Output is compact UTF-8
(non-ASCII characters as themselves, not `\\u` escapes); floats in exponent form are
spelled `1e-7` rather than `1e-07`, which parses to the same number.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON of `value`."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def loads(data: bytes | str) -> Any:
    """The value of a JSON text; raises ValueError (json.JSONDecodeError) when it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
