"""The routing `interlock up` uses when no routing file is given.

Every provider kind gets a few real model names. A provider whose API key is in the
environment is called for real; every other one is served by the built-in fake of its
wire format (one fake server, a path prefix per provider), so the whole mesh works
offline and the banner says which is which.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProviderDefault:
    kind: str
    """Adapter kind (wire format)."""
    name: str
    """Provider name in routes and usage rows."""
    real_base_url: str
    key_envs: tuple[str, ...]
    """Environment variables that may hold the provider's API key, first found wins."""
    fake_prefix: str
    """Path of this provider's fake on the fake server (`/v1` is OpenAI's own format)."""
    models: tuple[tuple[str, str], ...]
    """(name callers use, genai-prices model ref)."""
    price_provider: str = ""
    """genai-prices provider id when it differs from `name`."""


PROVIDERS: tuple[ProviderDefault, ...] = (
    ProviderDefault(
        "openai",
        "openai",
        "https://api.openai.com/v1",
        ("OPENAI_API_KEY",),
        "/v1",
        (
            ("gpt-4o-mini", "gpt-4o-mini"),
            ("gpt-4o", "gpt-4o"),
            ("gpt-4.1-mini", "gpt-4.1-mini"),
            ("gpt-4.1-nano", "gpt-4.1-nano"),
        ),
    ),
    ProviderDefault(
        "anthropic",
        "anthropic",
        "https://api.anthropic.com",
        ("ANTHROPIC_API_KEY",),
        "/anthropic",
        (("claude-3-5-haiku-latest", "claude-3-5-haiku-latest"), ("claude-sonnet-4-0", "claude-sonnet-4-0")),
    ),
    ProviderDefault(
        "cohere",
        "cohere",
        "https://api.cohere.com",
        ("CO_API_KEY", "COHERE_API_KEY"),
        "/cohere",
        (("command-r-plus", "command-r-plus"), ("command-a-03-2025", "command-a-03-2025")),
    ),
    ProviderDefault(
        "gemini",
        "google",
        "https://generativelanguage.googleapis.com",
        ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
        "/gemini",
        (("gemini-2.0-flash", "gemini-2.0-flash"), ("gemini-2.5-flash", "gemini-2.5-flash")),
    ),
    ProviderDefault(
        "mistral",
        "mistral",
        "https://api.mistral.ai",
        ("MISTRAL_API_KEY",),
        "/mistral",
        (("mistral-small-latest", "mistral-small-latest"), ("mistral-large-latest", "mistral-large-latest")),
    ),
)


def fake_server_root(url: str) -> str:
    """The fake server's root from a URL that may name its OpenAI path (`.../v1`)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def default_routing_document(fake_server_url: str, environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The routing document, and one banner line per provider saying real or fake.

    `fake_server_url` is the fake server's root, e.g. `http://127.0.0.1:8089`.
    """
    providers: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    banner: list[str] = []
    root = fake_server_url.rstrip("/")
    for p in PROVIDERS:
        key_env = next((e for e in p.key_envs if environ.get(e)), "")
        if key_env:
            providers.append({"name": p.name, "kind": p.kind, "base_url": p.real_base_url, "api_key_env": key_env})
        else:
            providers.append({"name": p.name, "kind": p.kind, "base_url": root + p.fake_prefix})
        names = ", ".join(n for n, _ in p.models)
        where = f"real API ({key_env})" if key_env else f"built-in fake at {root}{p.fake_prefix}"
        banner.append(f"{p.name}: {names} -> {where}")
        for model, ref in p.models:
            models.append(
                {"name": model, "provider": p.name, "price": {"provider": p.price_provider or p.name, "model": ref}}
            )
    # Azure OpenAI needs its resource endpoint as well as a key; the deployment is named like the model.
    azure_key = "AZURE_OPENAI_API_KEY" if environ.get("AZURE_OPENAI_API_KEY") else ""
    azure_endpoint = environ.get("AZURE_OPENAI_ENDPOINT", "") if azure_key else ""
    azure: dict[str, Any] = {
        "name": "azure",
        "kind": "azure_openai",
        "base_url": azure_endpoint or root + "/azure",
        "options": {"deployment": "gpt-4o-mini"},
    }
    if azure_endpoint:
        azure["api_key_env"] = azure_key
    providers.append(azure)
    models.append({"name": "azure-gpt-4o-mini", "provider": "azure", "upstream_model": "gpt-4o-mini"})
    where = f"real API ({azure_endpoint})" if azure_endpoint else f"built-in fake at {root}/azure"
    banner.append(f"azure: azure-gpt-4o-mini -> {where}")
    # Local models: Ollama when OLLAMA_HOST says where, else its fake; self-hosted, so priced at zero.
    ollama_host = environ.get("OLLAMA_HOST", "")
    ollama_url = (ollama_host if "://" in ollama_host else f"http://{ollama_host}") if ollama_host else root + "/ollama"
    providers.append({"name": "ollama", "kind": "ollama", "base_url": ollama_url})
    models.append({"name": "llama3.2", "provider": "ollama", "price": {"input_per_mtok": 0, "output_per_mtok": 0}})
    banner.append(
        f"ollama: llama3.2 -> {'local server at ' + ollama_url if ollama_host else 'built-in fake at ' + ollama_url}"
    )
    return {"providers": providers, "models": models}, banner
