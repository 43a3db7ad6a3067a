"""Where the bench's tools live (installed by bench/deps.sh under $INTERLOCK_CACHE) and their versions,
and how a bench run ends when it is told to stop."""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository."""


def stop_on_sigterm() -> None:
    """End the run on SIGTERM as on Ctrl-C: its `finally` blocks stop the gateways, nginx and
    load generators it started. (Python's default for SIGTERM ends the process without them,
    leaving those serving; a CI timeout or `kill` sends SIGTERM.) Exit status 143, as a shell
    reports a process ended by SIGTERM."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


class MissingToolError(RuntimeError):
    """A tool of the bench is not installed; the message says how to install it."""


def cache_dir() -> Path:
    return Path(os.environ.get("INTERLOCK_CACHE") or Path.home() / ".cache" / "interlock")


@dataclass(frozen=True)
class Tools:
    nginx: Path
    vegeta: Path
    ghz: Path
    litellm: Path
    """The `litellm` CLI inside its own venv."""


def find_tools(need_litellm: bool = True) -> Tools:
    cache = cache_dir()
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    paths = {
        "nginx": Path(nginx) if nginx else Path("/nonexistent/nginx"),
        "vegeta": cache / "bin" / "vegeta",
        "ghz": cache / "bin" / "ghz",
        "litellm": cache / "litellm" / "bin" / "litellm",
    }
    missing = [name for name, path in paths.items() if not path.exists() and (need_litellm or name != "litellm")]
    if missing:
        raise MissingToolError(f"missing {', '.join(missing)}: run `bash bench/deps.sh` (or `make bench`)")
    return Tools(**paths)


def _run(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False).stdout
    except OSError:
        return ""


def go_module_version(binary: Path) -> str:
    """The module version a Go binary was built from (`go version -m`), e.g. v12.13.0."""
    for line in _run(["go", "version", "-m", str(binary)]).splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "mod":
            return parts[2]
    return "unknown"


def commit() -> str:
    """Short commit of the tree being measured, `+uncommitted` when its files differ from it."""
    head = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).strip() or "unknown"
    dirty = _run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"]).strip()
    return f"{head}+uncommitted" if dirty else head


def python_build() -> str:
    """The CPython running the bench (and so its services): executable, libpython linkage."""
    maps = Path("/proc/self/maps")
    shared = maps.exists() and "libpython" in maps.read_text()
    return f"{os.path.realpath(sys.executable)}, libpython {'shared' if shared else 'linked in statically'}"


def versions(tools: Tools) -> dict[str, str]:
    """Versions of everything a run depends on, for the report."""
    nginx = subprocess.run([str(tools.nginx), "-v"], capture_output=True, text=True, check=False).stderr.strip()
    litellm_python = tools.litellm.parent / "python"
    litellm = (
        _run([str(litellm_python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"]).strip()
        if litellm_python.exists()
        else "not installed"
    )
    from importlib.metadata import version

    return {
        "interlock": version("interlock"),
        "interlock_commit": commit(),
        "python": platform.python_version(),
        "python_build": python_build(),
        "grpcio": version("grpcio"),
        "litellm": litellm,
        "nginx": nginx.split("/", 1)[-1] if "/" in nginx else nginx,
        "vegeta": go_module_version(tools.vegeta),
        "ghz": go_module_version(tools.ghz),
    }


def machine() -> dict[str, str]:
    """CPU model, core count, memory and kernel of this machine."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        model = match.group(1).strip() if match else ""
    mem_gb = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        match = re.search(r"^MemTotal:\s*(\d+) kB", meminfo.read_text(), re.MULTILINE)
        mem_gb = f"{int(match.group(1)) / 1024 / 1024:.0f} GB" if match else ""
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cores": str(os.cpu_count() or 0),
        "memory": mem_gb,
        "kernel": platform.release(),
        "os": platform.platform(terse=True),
        "load_avg_1m_at_start": f"{os.getloadavg()[0]:.2f}",
        "executable": sys.executable,
    }
