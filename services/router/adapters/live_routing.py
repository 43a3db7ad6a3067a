"""The router's live routing: one immutable snapshot (config + provider adapters), swapped whole.

A request reads `LiveRouting.current` once and keeps that snapshot to the end, so it is
served by exactly one config version even when a new one lands mid-call. A new version is
validated completely (schema, prices, provider keys) before the swap; a bad one is refused,
recorded, and the old one stays. Adapters are reused across versions when their provider's
settings did not change (connections stay warm); replaced ones are closed after in-flight
calls had time to finish.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from interlock.services.router.adapters.registry import build_provider
from interlock.services.router.domain.defaults import default_routing_document, fake_server_root
from interlock.services.router.domain.provider import ChatProvider
from interlock.services.router.domain.routing import (
    ProviderConfig,
    RoutingConfig,
    RoutingConfigError,
    config_version,
    parse_routing_config,
)

log = logging.getLogger("interlock.router.routing")
RETIRE_AFTER_S = 120.0
"""How long a replaced adapter stays open for calls pinned to the version that used it."""


@dataclass(frozen=True)
class RoutingSnapshot:
    config: RoutingConfig
    providers: Mapping[str, ChatProvider]
    loaded_at: float


@dataclass(frozen=True)
class RoutingSwitch:
    """One attempt to change the live config."""

    at: float
    version: str
    accepted: bool
    error: str = ""


@dataclass
class RoutingSources:
    """Where the routing document comes from."""

    routing_path: str = ""
    """A YAML file, or a directory (e.g. a mounted ConfigMap) whose `routing.yaml` is read."""
    price_overrides_path: str = ""
    fake_provider_url: str = "http://127.0.0.1:8089"
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)

    def routing_file(self) -> Path:
        path = Path(self.routing_path)
        return path / "routing.yaml" if path.is_dir() else path

    def read(self) -> tuple[Any, Any, list[str]]:
        """(document, price overrides, banner lines)."""
        banner: list[str] = []
        document: Any
        if self.routing_path:
            document = yaml.safe_load(self.routing_file().read_text())
            if not isinstance(document, dict):
                raise RoutingConfigError(f"{self.routing_file()}: must be a YAML mapping")
        else:
            document, banner = default_routing_document(fake_server_root(self.fake_provider_url), self.environ)
        overrides: Any = {}
        if self.price_overrides_path:
            loaded = yaml.safe_load(Path(self.price_overrides_path).read_text()) or {}
            overrides = loaded.get("models", {}) if isinstance(loaded, dict) else None
            if not isinstance(overrides, dict):
                raise RoutingConfigError(f"{self.price_overrides_path}: must be a mapping with `models`")
        return document, overrides, banner

    def fingerprint(self) -> str:
        """Changes whenever the inputs change (cheap to poll)."""
        parts = []
        for p in (self.routing_file() if self.routing_path else None, self.price_overrides_path):
            if p:
                try:
                    parts.append(Path(p).read_bytes())
                except OSError as exc:
                    parts.append(str(exc).encode())
        return str(hash(tuple(parts)))


def _adapter_key(cfg: ProviderConfig) -> tuple[object, ...]:
    """Adapters are reused while everything that shapes them is unchanged."""
    return (cfg.name, cfg.kind, cfg.base_url, cfg.api_key_env, cfg.timeout_s, tuple(sorted(cfg.options.items())))


class LiveRouting:
    def __init__(
        self,
        sources: RoutingSources,
        build: Callable[[ProviderConfig], ChatProvider] = build_provider,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sources = sources
        self._build = build
        self._clock = clock
        self._adapters: dict[tuple[object, ...], ChatProvider] = {}
        self._retired: list[tuple[float, ChatProvider]] = []
        self.switches: collections.deque[RoutingSwitch] = collections.deque(maxlen=50)
        document, overrides, banner = sources.read()
        for line in banner:
            log.info("default route", extra={"fields": {"route": line}})
        self.current = self._snapshot(parse_routing_config(document, config_version(document, overrides), overrides))
        self.switches.append(RoutingSwitch(self.current.loaded_at, self.current.config.version, True))
        self._fingerprint = sources.fingerprint()

    def _snapshot(self, config: RoutingConfig) -> RoutingSnapshot:
        adapters: dict[tuple[object, ...], ChatProvider] = {}
        by_name: dict[str, ChatProvider] = {}
        for cfg in config.providers.values():
            key = _adapter_key(cfg)
            adapter = adapters.get(key) or self._adapters.get(key) or self._build(cfg)
            adapters[key] = by_name[cfg.name] = adapter
        now = self._clock()
        for key, adapter in self._adapters.items():
            if key not in adapters:
                self._retired.append((now + RETIRE_AFTER_S, adapter))
        self._adapters = adapters
        return RoutingSnapshot(config, by_name, now)

    def reload(self) -> bool:
        """Read the sources; swap in a new valid version. True when the live version changed."""
        fingerprint = self._sources.fingerprint()
        if fingerprint == self._fingerprint:
            return False
        self._fingerprint = fingerprint
        version = "?"
        try:
            document, overrides, _ = self._sources.read()
            version = config_version(document, overrides)
            if version == self.current.config.version:
                return False
            snapshot = self._snapshot(parse_routing_config(document, version, overrides))
        except Exception as exc:  # noqa: BLE001 - any bad version is refused; the live one stays
            self.switches.append(RoutingSwitch(self._clock(), version, False, str(exc)[:2000]))
            log.error(
                "routing config refused; keeping the live version",
                extra={"fields": {"version": version, "live": self.current.config.version, "error": str(exc)}},
            )
            return False
        previous = self.current.config.version
        self.current = snapshot  # one reference assignment: the swap is atomic
        self.switches.append(RoutingSwitch(snapshot.loaded_at, version, True))
        log.info("routing config switched", extra={"fields": {"from": previous, "to": version}})
        return True

    async def watch(self, interval_s: float = 1.0) -> None:
        """Poll the sources and close retired adapters; runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.reload()
            await self._close_retired(self._clock())

    async def _close_retired(self, now: float) -> None:
        keep = []
        for due, adapter in self._retired:
            if due <= now:
                await adapter.aclose()
            else:
                keep.append((due, adapter))
        self._retired = keep

    async def aclose(self) -> None:
        for adapter in self._adapters.values():
            await adapter.aclose()
        for _, adapter in self._retired:
            await adapter.aclose()
        self._retired = []
