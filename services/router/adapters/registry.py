"""Builds the adapter for each configured provider, by its wire-format kind."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from interlock.services.router.adapters.anthropic import AnthropicProvider
from interlock.services.router.adapters.azure_openai import AzureOpenAIProvider
from interlock.services.router.adapters.cohere import CohereProvider
from interlock.services.router.adapters.gemini import GeminiProvider
from interlock.services.router.adapters.mistral import MistralProvider
from interlock.services.router.adapters.ollama import OllamaProvider
from interlock.services.router.adapters.openai import OpenAIProvider
from interlock.services.router.domain.provider import ChatProvider
from interlock.services.router.domain.routing import ProviderConfig, RoutingConfigError

# Local servers (the built-in fakes, Ollama, vLLM, llama.cpp) take any bearer token or none.
NO_KEY = "interlock-no-key"

_BUILDERS: dict[str, Callable[[ProviderConfig, str], ChatProvider]] = {
    "openai": lambda c, k: OpenAIProvider(name=c.name, base_url=c.base_url, api_key=k, timeout_s=c.timeout_s),
    "anthropic": lambda c, k: AnthropicProvider(name=c.name, base_url=c.base_url, api_key=k, timeout_s=c.timeout_s),
    "cohere": lambda c, k: CohereProvider(name=c.name, base_url=c.base_url, api_key=k, timeout_s=c.timeout_s),
    "gemini": lambda c, k: GeminiProvider(name=c.name, base_url=c.base_url, api_key=k, timeout_s=c.timeout_s),
    "mistral": lambda c, k: MistralProvider(name=c.name, base_url=c.base_url, api_key=k, timeout_s=c.timeout_s),
    "ollama": lambda c, k: OllamaProvider(
        name=c.name, base_url=c.base_url, api_key="" if k == NO_KEY else k, timeout_s=c.timeout_s
    ),
    "azure_openai": lambda c, k: AzureOpenAIProvider(
        name=c.name,
        endpoint=c.base_url,
        deployment=c.options.get("deployment", ""),
        api_version=c.options.get("api_version") or "2024-10-21",
        api_key=k,
        timeout_s=c.timeout_s,
    ),
}
KINDS = tuple(sorted(_BUILDERS))


def build_provider(cfg: ProviderConfig, environ: Mapping[str, str] | None = None) -> ChatProvider:
    env = os.environ if environ is None else environ
    api_key = env.get(cfg.api_key_env, "") if cfg.api_key_env else NO_KEY
    if not api_key:
        raise RoutingConfigError(f"provider {cfg.name}: environment variable {cfg.api_key_env} is not set")
    builder = _BUILDERS.get(cfg.kind)
    if builder is None:
        raise RoutingConfigError(f"provider {cfg.name}: unknown kind {cfg.kind!r}; known: {', '.join(KINDS)}")
    return builder(cfg, api_key)
