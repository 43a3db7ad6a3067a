"""Fake of Azure OpenAI, mounted at `/azure`: the OpenAI fake behind Azure's URL and auth.

`POST /azure/openai/deployments/{deployment}/chat/completions?api-version=...` with the key in
`api-key` (or `Authorization: Bearer`, as for Entra ID tokens) is answered by the OpenAI fake
(same answers, directives and errors, see `interlock.services.fakeprovider`). Without
`api-version` the answer is Azure's 404 "Resource not found"; without a key, Azure's 401.
The official `openai` SDK's `AsyncAzureOpenAI(azure_endpoint="http://host:port/azure", ...)`
sends exactly this shape.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs

from .app import FakeProviderApp, _respond
from .echo import Receive, Scope, Send, dumps

_CHAT_PATH = re.compile(r"^/openai/deployments/[^/]+/chat/completions$")


def _azure_error(code: str, message: str) -> bytes:
    return dumps({"error": {"code": code, "message": message}})


class AzureFakeApp:
    """ASGI app of the fake Azure OpenAI data plane (paths as seen below the mount prefix)."""

    def __init__(self) -> None:
        self._openai = FakeProviderApp(mount_providers=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if not _CHAT_PATH.match(scope["path"]) or not query.get("api-version"):
            await _respond(send, 404, _azure_error("404", "Resource not found"), [])
            return
        key = b""
        others: list[tuple[bytes, bytes]] = []
        for name, value in scope["headers"]:
            if name == b"api-key":
                key = value
            elif name == b"authorization":
                if value[:7].lower() == b"bearer ":
                    key = key or value[7:]
            else:
                others.append((name, value))
        if not key.strip():
            await _respond(
                send,
                401,
                _azure_error(
                    "401",
                    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
                    "valid key for an active subscription and use a correct regional API endpoint for your resource.",
                ),
                [],
            )
            return
        # The OpenAI fake does the rest; the body's `model` (the SDK sends the deployment) names it.
        inner = {**scope, "path": "/v1/chat/completions", "headers": [*others, (b"authorization", b"Bearer " + key)]}
        await self._openai(inner, receive, send)
