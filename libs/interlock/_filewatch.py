"""Hot reload of a config file: watch, validate, swap one reference, keep the old on error.

Polls the file's content (not inotify): it works the same on every filesystem, including
Kubernetes ConfigMap mounts, whose files change by an atomic symlink swap.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("interlock.config")


class FileWatcher(Generic[T]):
    """Calls `apply(parse(text))` whenever the file's content changes and parses.

    A file that fails to read or parse is logged and ignored: the last good config stays.
    """

    def __init__(
        self, path: str, parse: Callable[[str], T], apply: Callable[[T], None], interval_s: float = 1.0
    ) -> None:
        self.path = Path(path)
        self._parse = parse
        self._apply = apply
        self._interval = interval_s
        self._digest = ""
        self.reloads = 0
        """Successful swaps after the first load."""
        self.rejected = 0
        """Changed files that did not parse, kept out."""

    def load(self) -> T:
        """First load: errors propagate, so a service never starts on a bad file."""
        text = self.path.read_text()
        value = self._parse(text)
        self._digest = hashlib.sha256(text.encode()).hexdigest()
        return value

    def check(self) -> bool:
        """Reload if the content changed; True when a new config was applied."""
        try:
            text = self.path.read_text()
        except OSError as exc:
            log.warning(
                "config file unreadable; keeping the old one",
                extra={"fields": {"path": str(self.path), "error": str(exc)}},
            )
            return False
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest == self._digest:
            return False
        try:
            value = self._parse(text)
        except Exception as exc:  # noqa: BLE001 - any parse error keeps the old config
            self._digest = digest  # log a bad version once, not every poll
            self.rejected += 1
            log.error(
                "config file rejected; keeping the old one",
                extra={"fields": {"path": str(self.path), "error": str(exc)}},
            )
            return False
        self._digest = digest
        self._apply(value)
        self.reloads += 1
        log.info("config reloaded", extra={"fields": {"path": str(self.path)}})
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.check()
