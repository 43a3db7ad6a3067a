"""Azure OpenAI adapter: OpenAI's Chat Completions wire format at Azure's URL and auth.

Requests go to `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...`
with the key in the `api-key` header. Bodies, answers, streams and error mapping are the
OpenAI adapter's (Azure's content filter answers 400 with code `content_filter`, which that
mapping already makes CONTENT_FILTERED; its 429s carry `retry-after-ms` / `retry-after`).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

from .openai import OpenAIProvider

DEFAULT_API_VERSION = "2024-10-21"
"""The latest GA data-plane API version of Azure OpenAI chat completions at the time of writing."""


class AzureOpenAIProvider(OpenAIProvider):
    """ChatProvider for one Azure OpenAI deployment."""

    __slots__ = ()

    def __init__(
        self,
        *,
        endpoint: str,
        deployment: str,
        api_key: str,
        api_version: str = DEFAULT_API_VERSION,
        name: str = "azure",
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 256,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """`endpoint` is the resource URL (`https://<resource>.openai.azure.com`); `deployment`
        names the model deployment; requests' `upstream_model` is still sent as `model`
        (Azure ignores it)."""
        self._init_openai(
            name=name,
            base_url=f"{endpoint.rstrip('/')}/openai/deployments/{quote(deployment, safe='')}",
            api_key=api_key,
            auth_headers={"api-key": api_key} if api_key else {},
            path="chat/completions",
            params={"api-version": api_version},
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
            headers=headers,
        )
