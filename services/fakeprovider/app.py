"""The fake provider's ASGI app: OpenAI Chat Completions wire format, deterministic answers.

No web framework on purpose: the app sits under a latency benchmark, so each request is
one pass over the headers, one `json.loads` and one `json.dumps`.

See the package docstring (`interlock.services.fakeprovider`) for the behaviour: answers,
token counting, validation, authentication and fault injection.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_MODELS: tuple[str, ...] = ("fake-echo",)
"""Model ids listed by `GET /v1/models`; chat completions accept any model id."""

FAULT_HEADER = b"x-fake-fault"
_VALID_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_ROLES_NEEDING_CONTENT = frozenset({"system", "user", "developer", "tool"})

# (type, code, message) per injected status, as OpenAI words them; others use a generic one.
_STATUS_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request (injected fault)."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided (injected fault).",
    ),
    403: (
        "invalid_request_error",
        "permission_denied",
        "You are not allowed to sample from this model.",
    ),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests (injected fault).",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request (injected fault).",
    ),
    503: (
        "server_error",
        None,
        "The engine is currently overloaded, please try again later (injected fault).",
    ),
}


# (type, code, message) per injected `code=`, as OpenAI (and Azure, for content_filter) word them.
_CODE_ERRORS: dict[str, tuple[str, str, str]] = {
    "context_length_exceeded": (
        "invalid_request_error",
        "context_length_exceeded",
        "This model's maximum context length is 128000 tokens. However, your messages resulted in "
        "130000 tokens. Please reduce the length of the messages.",
    ),
    "content_filter": (
        "invalid_request_error",
        "content_filter",
        "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
    ),
    "content_policy_violation": (
        "invalid_request_error",
        "content_policy_violation",
        "Your request was rejected as a result of our safety system.",
    ),
}

# OpenAI sends its rate-limit state on every answer; a 429 shows the requests budget spent.
_RATE_LIMIT_OK_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-ratelimit-limit-requests", b"10000"),
    (b"x-ratelimit-limit-tokens", b"2000000"),
    (b"x-ratelimit-remaining-requests", b"9999"),
    (b"x-ratelimit-remaining-tokens", b"1999000"),
    (b"x-ratelimit-reset-requests", b"6ms"),
    (b"x-ratelimit-reset-tokens", b"30ms"),
]
_RATE_LIMIT_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-ratelimit-limit-requests", b"10000"),
    (b"x-ratelimit-limit-tokens", b"2000000"),
    (b"x-ratelimit-remaining-requests", b"0"),
    (b"x-ratelimit-remaining-tokens", b"1999000"),
    (b"x-ratelimit-reset-requests", b"1s"),
    (b"x-ratelimit-reset-tokens", b"30ms"),
]


def count_tokens(text: str) -> int:
    """Fake tokenizer: one token per whitespace-separated word."""
    return len(text.split())


@dataclass(frozen=True, slots=True)
class Fault:
    """Faults to inject into one request (all off by default)."""

    status: int | None = None
    retry_after: str | None = None
    message: str | None = None
    delay_ms: int = 0
    chunk_delay_ms: int = 0
    truncate_after: int | None = None
    code: str | None = None
    """Provider error code to answer with (`context_length_exceeded`, `content_filter`, ...)."""
    tool_call: str | None = None
    """Answer with a call of this tool instead of text (unless the last message is a tool result)."""
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    finish: str | None = None
    """The provider's finish reason to report instead of the natural one."""
    error_after: int | None = None
    """Streaming: send the provider's in-stream error event after n pieces."""


_COUNT_DIRECTIVES = frozenset(
    {
        "delay_ms",
        "chunk_delay_ms",
        "truncate_after",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "error_after",
    }
)


def parse_fault(spec: str, base: Fault | None = None) -> Fault:
    """Parse `key=value; key=value` directives on top of `base`; ValueError on a bad one."""
    fault = base or Fault()
    for raw in spec.split(";"):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise ValueError(f"fault directive {item!r} is not key=value")
        if key == "status":
            status = int(value)
            if not 400 <= status <= 599:
                raise ValueError("fault status must be 400..599")
            fault = replace(fault, status=status)
        elif key == "retry_after":
            float(value)  # validated only; sent verbatim as Retry-After
            fault = replace(fault, retry_after=value)
        elif key in ("message", "code", "tool_call", "finish"):
            changes: dict[str, Any] = {key: value}  # a str field, by the key set above
            fault = replace(fault, **changes)
        elif key in _COUNT_DIRECTIVES:
            number = int(value)
            if number < 0:
                raise ValueError(f"fault {key} must be >= 0")
            counts: dict[str, Any] = {key: number}  # an int field, by _COUNT_DIRECTIVES
            fault = replace(fault, **counts)
        else:
            raise ValueError(f"unknown fault directive {key!r}")
    return fault


class BadRequest(Exception):
    """A request OpenAI would answer with 400 invalid_request_error."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a validated chat completion request the fake uses."""

    model: str
    prompt_tokens: int
    last_user_text: str
    max_tokens: int | None
    stream: bool
    include_usage: bool
    tool_names: tuple[str, ...] = ()
    """Names of the functions in `tools`."""
    tool_result_text: str | None = None
    """Content of the last message when it is a tool result (the fake then echoes it)."""
    forced_tool: str | None = None
    """The tool `tool_choice` forces (a named function, or the first tool for `required`)."""


def _json_type(value: object) -> str:
    # Wording of OpenAI's "expected X, but got Y instead" messages.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _content_text(content: object, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts: list[str] = []
        for i, part in enumerate(content):
            if not isinstance(part, dict):
                raise BadRequest(
                    f"Invalid type for '{param}[{i}]': expected an object, but got {_json_type(part)} instead.",
                    f"{param}[{i}]",
                    "invalid_type",
                )
            text = part.get("text")
            if part.get("type") == "text" and isinstance(text, str):
                texts.append(text)
        return " ".join(texts)
    raise BadRequest(
        f"Invalid type for '{param}': expected one of a string or array of objects, "
        f"but got {_json_type(content)} instead.",
        param,
        "invalid_type",
    )


def _int_param(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(
            f"Invalid type for '{name}': expected an integer, but got {_json_type(value)} instead.",
            name,
            "invalid_type",
        )
    if value < 1:
        raise BadRequest(
            f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {value} instead.",
            name,
            "integer_below_min_value",
        )
    return int(value)


def validate_chat(body: object) -> ChatRequest:
    """Check a chat completion body the way OpenAI does; raises BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest(f"Invalid type for body: expected an object, but got {_json_type(body)} instead.")
    model = body.get("model")
    if model is None:
        raise BadRequest("you must provide a model parameter")
    if not isinstance(model, str):
        raise BadRequest(
            f"Invalid type for 'model': expected a string, but got {_json_type(model)} instead.",
            "model",
            "invalid_type",
        )
    if "messages" not in body:
        raise BadRequest(
            "Missing required parameter: 'messages'.",
            "messages",
            "missing_required_parameter",
        )
    messages = body["messages"]
    if not isinstance(messages, list):
        raise BadRequest(
            f"Invalid type for 'messages': expected an array, but got {_json_type(messages)} instead.",
            "messages",
            "invalid_type",
        )
    if not messages:
        raise BadRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            "messages",
            "empty_array",
        )
    prompt_tokens = 0
    last_user_text = ""
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(
                f"Invalid type for '{param}': expected an object, but got {_json_type(message)} instead.",
                param,
                "invalid_type",
            )
        role = message.get("role")
        if role is None:
            raise BadRequest(
                f"Missing required parameter: '{param}.role'.",
                f"{param}.role",
                "missing_required_parameter",
            )
        if role not in _VALID_ROLES:
            raise BadRequest(
                f"Invalid value: {json.dumps(role)}. Supported values are: 'system', 'assistant', "
                "'user', 'function', 'tool', and 'developer'.",
                f"{param}.role",
                "invalid_value",
            )
        if role in _ROLES_NEEDING_CONTENT and message.get("content") is None:
            raise BadRequest(
                f"Missing required parameter: '{param}.content'.",
                f"{param}.content",
                "missing_required_parameter",
            )
        text = _content_text(message.get("content"), f"{param}.content")
        prompt_tokens += count_tokens(text)
        if role == "user":
            last_user_text = text
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise BadRequest(
                f"Missing required parameter: '{param}.tool_call_id'.",
                f"{param}.tool_call_id",
                "missing_required_parameter",
            )
        if role == "assistant":
            prompt_tokens += _validate_tool_calls(message.get("tool_calls"), f"{param}.tool_calls")
    last = messages[-1]
    tool_result_text = _content_text(last.get("content"), "content") if last.get("role") == "tool" else None
    tool_names = _validate_tools(body.get("tools"), body.get("tool_choice"))
    response_format = body.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, dict)
        or response_format.get("type") not in ("text", "json_object", "json_schema")
    ):
        raise BadRequest(
            "Invalid 'response_format.type': expected one of 'text', 'json_object' or 'json_schema'.",
            "response_format.type",
            "invalid_value",
        )
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(x, str) for x in stop))
    ):
        raise BadRequest("Invalid 'stop': expected a string or an array of at most 4 strings.", "stop", "invalid_value")
    # max_completion_tokens is the newer name; either one bounds the answer.
    max_completion_tokens = _int_param(body, "max_completion_tokens")
    max_tokens = max_completion_tokens or _int_param(body, "max_tokens")
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise BadRequest(
                f"Invalid type for 'temperature': expected a decimal, but got {_json_type(temperature)} instead.",
                "temperature",
                "invalid_type",
            )
        if temperature < 0:
            raise BadRequest(
                "Invalid 'temperature': decimal below minimum value. "
                f"Expected a value >= 0, but got {temperature} instead.",
                "temperature",
                "decimal_below_min_value",
            )
        if temperature > 2:
            raise BadRequest(
                "Invalid 'temperature': decimal above maximum value. "
                f"Expected a value <= 2, but got {temperature} instead.",
                "temperature",
                "decimal_above_max_value",
            )
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequest("The Interlock fake provider supports only n=1.", "n", "invalid_value")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest(
            f"Invalid type for 'stream': expected a boolean, but got {_json_type(stream)} instead.",
            "stream",
            "invalid_type",
        )
    include_usage = False
    stream_options = body.get("stream_options")
    if stream_options is not None:
        if not stream:
            raise BadRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
                "invalid_value",
            )
        if not isinstance(stream_options, dict):
            raise BadRequest(
                f"Invalid type for 'stream_options': expected an object, but got {_json_type(stream_options)} instead.",
                "stream_options",
                "invalid_type",
            )
        flag = stream_options.get("include_usage", False)
        if not isinstance(flag, bool):
            raise BadRequest(
                f"Invalid type for 'stream_options.include_usage': expected a boolean, but got "
                f"{_json_type(flag)} instead.",
                "stream_options.include_usage",
                "invalid_type",
            )
        include_usage = flag
    return ChatRequest(
        model=model.partition("@")[0],
        prompt_tokens=max(1, prompt_tokens),
        last_user_text=last_user_text,
        max_tokens=max_tokens,
        stream=bool(stream),
        include_usage=include_usage,
        tool_names=tool_names,
        forced_tool=_forced_tool(body.get("tool_choice"), tool_names),
        tool_result_text=tool_result_text,
    )


def _validate_tool_calls(calls: object, param: str) -> int:
    """Check an assistant message's `tool_calls`; returns their prompt tokens."""
    if calls is None:
        return 0
    if not isinstance(calls, list):
        raise BadRequest(
            f"Invalid type for '{param}': expected an array, but got {_json_type(calls)} instead.",
            param,
            "invalid_type",
        )
    tokens = 0
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(call, dict)
            or not isinstance(call.get("id"), str)
            or call.get("type") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments"), str)
        ):
            raise BadRequest(
                f"Invalid '{param}[{i}]': expected an object with id, type 'function' and function.name/arguments.",
                f"{param}[{i}]",
                "invalid_value",
            )
        tokens += count_tokens(function["arguments"]) + 1
    return tokens


def _forced_tool(tool_choice: object, names: tuple[str, ...]) -> str | None:
    # A real model called with a forced tool answers with a call of it; so does the fake.
    if tool_choice == "required" and names:
        return names[0]
    if isinstance(tool_choice, dict):
        named = tool_choice.get("function", {}).get("name")
        return named if isinstance(named, str) else None
    return None


def _validate_tools(tools: object, tool_choice: object) -> tuple[str, ...]:
    """Check `tools` and `tool_choice` as OpenAI does; returns the function names."""
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise BadRequest(
                f"Invalid type for 'tools': expected an array, but got {_json_type(tools)} instead.",
                "tools",
                "invalid_type",
            )
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if (
                not isinstance(tool, dict)
                or tool.get("type") != "function"
                or not isinstance(function, dict)
                or not isinstance(function.get("name"), str)
            ):
                raise BadRequest(
                    f"Invalid 'tools[{i}]': expected an object with type 'function' and function.name.",
                    f"tools[{i}]",
                    "invalid_value",
                )
            names.append(function["name"])
    if tool_choice is not None:
        if not names:
            raise BadRequest(
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                "tool_choice",
                None,
            )
        named = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else None
        if tool_choice not in ("auto", "none", "required") and named not in names:
            raise BadRequest("Invalid value for 'tool_choice'.", "tool_choice", "invalid_value")
    return tuple(names)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a fake answers to one request, in any provider's format."""

    pieces: list[str]
    """Answer text as stream pieces, one token each (empty for a tool call)."""
    finish_reason: str
    """Natural finish: `stop`, `length` or `tool_calls` (providers word it their own way)."""
    completion_tokens: int
    """Output tokens, reasoning included."""
    tool_name: str | None = None
    tool_arguments: str = ""
    """JSON text of the tool call's arguments."""

    @property
    def tool_argument_pieces(self) -> list[str]:
        """The arguments cut into stream fragments of 8 characters."""
        text = self.tool_arguments
        return [text[i : i + 8] for i in range(0, len(text), 8)]


def answer_pieces(request: ChatRequest) -> tuple[list[str], str]:
    """The answer as stream pieces (one token each) and its finish reason.

    The pieces join to "Echo: <words of the last user message>" (of the tool result, when the
    last message is one), cut to max_tokens words.
    """
    text = request.last_user_text if request.tool_result_text is None else request.tool_result_text
    words = ["Echo:", *text.split()]
    finish_reason = "stop"
    if request.max_tokens is not None and len(words) > request.max_tokens:
        words = words[: request.max_tokens]
        finish_reason = "length"
    return [words[0], *(" " + w for w in words[1:])], finish_reason


def plan_answer(request: ChatRequest, fault: Fault) -> Answer:
    """The answer: a call of `fault.tool_call` (arguments `{"text": <last user message>}`)
    unless the last message is a tool result, else the echo; raises BadRequest for an
    unknown tool."""
    tool = fault.tool_call or request.forced_tool
    if tool is not None and request.tool_result_text is None:
        if request.tool_names and tool not in request.tool_names:
            raise BadRequest(f"Tool {tool!r} is not among the request's tools.", "tools", "invalid_value")
        arguments = json.dumps({"text": request.last_user_text})
        return Answer(
            pieces=[],
            finish_reason="tool_calls",
            completion_tokens=count_tokens(arguments) + fault.reasoning_tokens,
            tool_name=tool,
            tool_arguments=arguments,
        )
    pieces, finish_reason = answer_pieces(request)
    return Answer(pieces=pieces, finish_reason=finish_reason, completion_tokens=len(pieces) + fault.reasoning_tokens)


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    """OpenAI's error JSON shape."""
    return _dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


class FakeProviderApp:
    """ASGI app of the fake OpenAI-compatible provider."""

    def __init__(self, models: Sequence[str] = DEFAULT_MODELS, *, mount_providers: bool = True) -> None:
        """`mount_providers=False` serves OpenAI's format only (for fakes that wrap this one)."""
        self._models_body = _dumps(
            {
                "object": "list",
                "data": [{"id": m, "object": "model", "created": 0, "owned_by": "interlock"} for m in models],
            }
        )
        self._ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        from .mounts import provider_apps

        self._mounts = provider_apps() if mount_providers else {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            return
        method: str = scope["method"]
        path: str = scope["path"]
        for prefix, app in self._mounts.items():
            if path.startswith(prefix + "/"):
                await app({**scope, "path": path[len(prefix) :], "root_path": prefix}, receive, send)
                return
        authorization = b""
        fault_spec = b""
        request_id = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == FAULT_HEADER:
                fault_spec = value
            elif name == b"x-request-id":
                request_id = value
        if not request_id:
            request_id = b"req_fake%08d" % next(self._request_ids)
        headers = [(b"x-request-id", request_id)]

        if path == "/health" and method == "GET":
            await _respond(send, 200, b'{"status":"ok"}', headers)
            return
        if path not in ("/v1/chat/completions", "/v1/models"):
            await _respond(
                send,
                404,
                error_body(f"Invalid URL ({method} {path})", "invalid_request_error"),
                headers,
            )
            return
        expected = "POST" if path == "/v1/chat/completions" else "GET"
        if method != expected:
            await _respond(
                send,
                405,
                error_body(f"Invalid method for URL ({method} {path})", "invalid_request_error"),
                headers,
            )
            return
        token = authorization[7:].strip() if authorization[:7].lower() == b"bearer " else b""
        if not token:
            await _respond(
                send,
                401,
                error_body(
                    "You didn't provide an API key. You need to provide your API key in an Authorization "
                    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    "invalid_request_error",
                ),
                headers,
            )
            return

        raw = await _read_body(receive) if method == "POST" else b""
        body: object = None
        if method == "POST":
            try:
                body = json.loads(raw)
            except ValueError:
                await _respond(
                    send,
                    400,
                    error_body(
                        "We could not parse the JSON body of your request. (HINT: This likely means you "
                        "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                        "but what was sent was not valid JSON.)",
                        "invalid_request_error",
                    ),
                    headers,
                )
                return
        try:
            # Faults from the model name ("fake-echo@status=429") first, the header overrides.
            fault = Fault()
            model = body.get("model") if isinstance(body, dict) else None
            if isinstance(model, str) and "@" in model:
                fault = parse_fault(model.partition("@")[2], fault)
            if fault_spec:
                fault = parse_fault(fault_spec.decode("latin-1"), fault)
        except ValueError as exc:
            await _respond(
                send,
                400,
                error_body(f"Invalid fault: {exc}", "invalid_request_error", "x-fake-fault"),
                headers,
            )
            return

        if fault.delay_ms and not await _sleep_unless_disconnected(fault.delay_ms / 1000, receive):
            return
        if fault.status is not None or fault.code is not None:
            await self._fault_status(send, fault, headers)
            return
        if path == "/v1/models":
            await _respond(send, 200, self._models_body, headers)
            return
        try:
            request = validate_chat(body)
        except BadRequest as exc:
            await _respond(
                send,
                400,
                error_body(exc.message, "invalid_request_error", exc.param, exc.code),
                headers,
            )
            return
        if request.stream:
            await self._stream(request, fault, receive, send, headers)
        else:
            await self._unary(request, fault, send, headers)

    async def _fault_status(self, send: Send, fault: Fault, headers: list[tuple[bytes, bytes]]) -> None:
        status = fault.status or 400  # a bare `code=` is a 400 with that code
        code: str | None
        if fault.code is not None and fault.code in _CODE_ERRORS:
            type_, code, message = _CODE_ERRORS[fault.code]
        else:
            type_, code, message = _STATUS_ERRORS.get(
                status,
                (
                    "server_error" if status >= 500 else "invalid_request_error",
                    None,
                    f"Injected fault {status}.",
                ),
            )
            code = fault.code or code
        if status == 429:
            headers.append((b"retry-after", (fault.retry_after or "1").encode()))
            headers.extend(_RATE_LIMIT_HEADERS)
        elif fault.retry_after is not None:
            headers.append((b"retry-after", fault.retry_after.encode()))
        await _respond(
            send,
            status,
            error_body(fault.message or message, type_, None, code),
            headers,
        )

    async def _unary(
        self,
        request: ChatRequest,
        fault: Fault,
        send: Send,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        answer = plan_answer(request, fault)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(answer.pieces) if answer.tool_name is None else None,
            "refusal": None,
        }
        if answer.tool_name is not None:
            message["tool_calls"] = [
                {
                    "id": f"call_fake{next(self._ids):08d}",
                    "type": "function",
                    "function": {"name": answer.tool_name, "arguments": answer.tool_arguments},
                }
            ]
        body = _dumps(
            {
                "id": f"chatcmpl-fake{next(self._ids):08d}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.model,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": fault.finish or answer.finish_reason,
                    }
                ],
                "usage": _usage(request, answer, fault),
            }
        )
        if fault.truncate_after is not None:
            body = body[: fault.truncate_after]  # malformed JSON on purpose
        await _respond(send, 200, body, headers + _RATE_LIMIT_OK_HEADERS)

    async def _stream(
        self,
        request: ChatRequest,
        fault: Fault,
        receive: Receive,
        send: Send,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        answer = plan_answer(request, fault)
        head: dict[str, Any] = {
            "id": f"chatcmpl-fake{next(self._ids):08d}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.model,
            "system_fingerprint": None,
        }
        # With include_usage OpenAI puts "usage": null on every chunk but the last.
        tail: dict[str, Any] = {"usage": None} if request.include_usage else {}

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish,
            }
            return b"data: " + _dumps({**head, "choices": [choice], **tail}) + b"\n\n"

        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    *headers,
                    *_RATE_LIMIT_OK_HEADERS,
                ],
            }
        )
        if answer.tool_name is None:
            events = [event({"role": "assistant", "content": "", "refusal": None})]
            deltas = [event({"content": piece}) for piece in answer.pieces]
        else:
            call_id = f"call_fake{next(self._ids):08d}"
            first = {
                "index": 0,
                "id": call_id,
                "type": "function",
                "function": {"name": answer.tool_name, "arguments": ""},
            }
            events = [event({"role": "assistant", "content": None, "tool_calls": [first], "refusal": None})]
            deltas = [
                event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                for piece in answer.tool_argument_pieces
            ]
        chunk_delay = fault.chunk_delay_ms / 1000
        for sent, delta in enumerate(deltas):
            if fault.error_after is not None and sent >= fault.error_after:
                # The server fails mid-answer: an error event, then the body ends.
                error = {"message": "The server had an error processing your request.", "type": "server_error"}
                events.append(b"data: " + _dumps({"error": {**error, "param": None, "code": None}}) + b"\n\n")
                await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})
                return
            if fault.truncate_after is not None and sent >= fault.truncate_after:
                # Cut short: no finish chunk, no usage, no [DONE].
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"".join(events),
                        "more_body": False,
                    }
                )
                return
            events.append(delta)
            if chunk_delay:
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"".join(events),
                        "more_body": True,
                    }
                )
                events.clear()
                if not await _sleep_unless_disconnected(chunk_delay, receive):
                    return
        events.append(event({}, fault.finish or answer.finish_reason))
        if request.include_usage:
            usage = {
                **head,
                "choices": [],
                "usage": _usage(request, answer, fault),
            }
            events.append(b"data: " + _dumps(usage) + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        # Without chunk delays all events go out in one write: the client still parses them
        # incrementally, and the benchmark is not paying for a syscall per token.
        await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})


def _usage(request: ChatRequest, answer: Answer, fault: Fault) -> dict[str, Any]:
    # Cached tokens are part of prompt_tokens, reasoning tokens part of completion_tokens.
    prompt_tokens = max(request.prompt_tokens, fault.cached_tokens)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": prompt_tokens + answer.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": fault.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": fault.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while message.get("more_body", False):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _sleep_unless_disconnected(seconds: float, receive: Receive) -> bool:
    """Sleep; return False early if the client went away (so delays do not pin the server)."""
    try:
        await asyncio.wait_for(_wait_disconnect(receive), timeout=seconds)
    except TimeoutError:
        return True
    return False


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
