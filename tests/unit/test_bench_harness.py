"""The pure parts of the `make bench` harness (bench/): its configs are valid Interlock configs,
and its statistics and verdicts say what docs/BENCHMARKS.md claims they say."""

from __future__ import annotations

import importlib
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.compare import round_seconds
from bench.gateways import LIMITS_YAML, MODELS, routing_yaml
from bench.report import BEGIN, END, render_table, target_verdicts
from bench.stats import PathAtRate, Round, add_baseline, highest_sustained, merge, percentile
from interlock.services.ratelimit.domain.limits import parse_limit_config
from interlock.services.router.domain.routing import parse_routing_config


def test_routing_points_each_bench_model_at_its_upstream_path() -> None:
    config = parse_routing_config(yaml.safe_load(routing_yaml("http://127.0.0.1:9")), "v")
    assert set(config.models) == set(MODELS)
    assert config.providers["bench-unary"].base_url == "http://127.0.0.1:9/unary/v1"
    assert config.providers["bench-stream"].base_url == "http://127.0.0.1:9/stream/v1"


def test_limits_give_every_descriptor_the_router_sends_a_rule() -> None:
    config = parse_limit_config([yaml.safe_load(LIMITS_YAML)])
    api_key, project = ("api_key", "k1"), ("project", "default/bench")
    for entries in ((api_key,), (project,), (("provider", "p"), ("model", "m"))):
        assert config.find("interlock", entries), entries
    for entries in ((api_key,), (project,)):
        assert config.find("interlock", (("usage", "tokens"), *entries)), entries


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([3.0], 99) == 3
    assert math.isnan(percentile([], 50))


def _round(path: str, rate: float, latencies: list[float], errors: int = 0) -> Round:
    return Round(path, rate, 0, 10.0, len(latencies), errors, {"boom": errors} if errors else {}, 10.0, latencies)


def test_added_latency_and_highest_sustained_rate() -> None:
    rows: list[PathAtRate] = []
    for rate, extra in ((50.0, 1.0), (100.0, 4.0), (200.0, 30.0)):
        n = int(rate * 10)
        direct = merge([_round("direct", rate, [2.0] * n)])
        through = merge([_round("interlock-grpc", rate, [2.0 + extra] * n)])
        add_baseline(through, direct)
        rows += [direct, through]
    assert [r.added_p99_ms for r in rows if r.path == "interlock-grpc"] == [1.0, 4.0, 30.0]
    assert highest_sustained(rows, "interlock-grpc") == 100.0
    verdicts = {v["target"]: v for v in target_verdicts(rows, {"interlock-grpc": 100.0})}
    assert verdicts["interlock-grpc: p50 added <= 1 ms at 100/s"]["met"] is False
    assert verdicts["interlock-grpc: p99 added <= 5 ms at 1,000/s"]["measured"] == "1,000/s not in this run"
    table = render_table(rows, {"sustained": {"interlock-grpc": 100.0}, "targets": list(verdicts.values())})
    assert "| interlock-grpc | 100/s | 200/s | 200/s |" in table  # sustained, carried, driven up to


def test_errors_above_one_percent_are_not_sustained() -> None:
    direct = merge([_round("direct", 50.0, [1.0] * 500)])
    through = merge([_round("litellm-http", 50.0, [1.5] * 490, errors=10)])
    add_baseline(through, direct)
    assert through.error_rate == 0.02
    assert not through.sustained()


def test_generated_doc_section_is_delimited() -> None:
    # write_docs replaces only what lies between these markers.
    text = Path(__file__).resolve().parents[2].joinpath("docs", "BENCHMARKS.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert text.index(BEGIN) < text.index(END)


def test_cpu_per_call_is_split_by_process_and_rendered() -> None:
    rounds = []
    for index, (router_s, budget_s) in enumerate(((1.0, 0.5), (3.0, 0.5))):
        r = _round("interlock-grpc", 100.0, [3.0] * 1000)
        r.index = index
        r.service_cpu_s = {"router": router_s, "budget": budget_s}
        rounds.append(r)
    rounds[1].latencies_ms = [3.0] * 980 + [9.0] * 20  # the second round's slowest 2% at 9 ms
    row = merge(rounds)
    assert row.round_p99_ms == [3.0, 9.0]  # each round's own p99, in the order run
    assert row.p99_ms == 3.0  # over both rounds the 20 slow calls are 1%: the merged p99 misses them
    # 4 s of router CPU over 2,000 answered calls: 2 ms a call; budget 0.5 ms.
    assert row.cpu_ms_per_call == {"budget": 0.5, "router": 2.0}
    table = render_table([row], {})
    assert "| rate | path | budget | router | total |" in table
    assert "| 100/s | interlock-grpc | 0.50 | 2.00 | 2.50 |" in table
    # A gateway of one process (LiteLLM) has nothing to split: no such table.
    assert "CPU per answered call" not in render_table([merge([_round("litellm-http", 50.0, [1.0] * 10)])], {})


def test_probe_variants_parse_and_refuse_malformed_items() -> None:
    from bench.probe import parse_variant

    assert parse_variant("") == {}
    assert parse_variant("A=1, B=x=y") == {"A": "1", "B": "x=y"}
    for bad in ("A", "=1", "A=1,B"):
        with pytest.raises(ValueError, match="NAME=VALUE"):
            parse_variant(bad)


def test_mesh_services_run_on_the_configured_interpreter(tmp_path: Path) -> None:
    """`python=PATH` in a probe variant reaches MeshConfig.python: each service is started by
    that interpreter with `-m <module>`, not by the harness's own."""
    import stat

    from interlock.mesh import Mesh, MeshConfig

    seen = tmp_path / "argv.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$0 $*" > {seen}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    mesh = Mesh(MeshConfig(data_dir=tmp_path, python=str(fake)))
    mesh._spawn("router", "interlock.services.router", ["--flag"], {"PATH": "/usr/bin:/bin"})
    assert mesh.processes["router"].wait(timeout=10) == 0
    assert seen.read_text().split() == [str(fake), "-m", "interlock.services.router", "--flag"]
    assert MeshConfig().python == ""  # the default: the harness's own interpreter


def test_probe_round_gives_latency_and_cpu_per_answered_call() -> None:
    from bench.load import RunResult
    from bench.probe import round_figures

    result = RunResult(
        [float(i) for i in range(1, 101)], ok=100, errors=4, error_kinds={}, first_send_s=0, last_done_s=1
    )
    figures = round_figures(result, {"router": 0.2, "budget": 0.1}, {"router": 130.0})
    assert (figures["p50_ms"], figures["p99_ms"], figures["errors"]) == (50.0, 99.0, 4.0)
    assert figures["cpu_ms_per_call.router"] == pytest.approx(2.0)  # 200 ms over the 100 answered
    assert figures["cpu_ms_per_call.total"] == pytest.approx(3.0)
    assert figures["peak_rss_mb.router"] == 130.0


def test_rounds_at_low_rates_last_long_enough_for_the_minimum_of_calls() -> None:
    assert round_seconds(10, 10, 300) == 30  # the p99 of 600 calls over two rounds, not of 200
    assert round_seconds(25, 10, 300) == 12
    assert round_seconds(100, 10, 300) == 10  # --seconds already gives 1,000 calls
    assert round_seconds(10, 10, 0) == 10


def test_both_gateways_serve_from_the_same_single_cpu(tmp_path: Path) -> None:
    """The bench binds Interlock's router and LiteLLM's proxy alike: one CPU, the same one."""
    import os

    from bench.gateways import BENCH_ENV, LiteLLMProxy

    cpu = BENCH_ENV["INTERLOCK_ROUTER_CPUS"]
    assert int(cpu) in os.sched_getaffinity(0)
    command = LiteLLMProxy(tmp_path, tmp_path / "litellm", "http://127.0.0.1:1")._command()
    assert list(command[:4]) == ["taskset", "-c", cpu, str(tmp_path / "litellm")]
    unbound = LiteLLMProxy(tmp_path, tmp_path / "litellm", "http://127.0.0.1:1", cpus="")._command()
    assert unbound[0] == str(tmp_path / "litellm")


def test_ghz_calls_the_routers_event_loop_port_when_the_bench_turns_it_on() -> None:
    from bench.gateways import LOOP_GRPC_PORT, InterlockGateway
    from bench.report import transport_text

    loop = InterlockGateway("http://127.0.0.1:1")
    port = int(loop.cfg.extra_env[LOOP_GRPC_PORT])
    assert port > 0 and loop.grpc_target == f"127.0.0.1:{port}" != loop.cfg.target("router")
    aio = InterlockGateway("http://127.0.0.1:1", {LOOP_GRPC_PORT: "-1"})
    assert aio.grpc_target == aio.cfg.target("router")
    assert LOOP_GRPC_PORT in transport_text({"grpc_transport": "loop"})
    assert transport_text({"grpc_transport": "grpc.aio"}) == transport_text({}) == ""


def test_sigterm_ends_a_bench_run_through_its_cleanup() -> None:
    # A run killed by SIGTERM (a CI timeout, `kill`) must still stop the processes it started.
    script = (
        "import sys, time\n"
        "from bench.tools import stop_on_sigterm\n"
        "stop_on_sigterm()\n"
        "try:\n"
        "    print('running', flush=True)\n"
        "    time.sleep(60)\n"
        "finally:\n"
        "    print('stopped what it started', flush=True)\n"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "running"
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    assert rest.strip() == "stopped what it started"
    assert proc.returncode == 128 + signal.SIGTERM


class _Started(Exception):
    """Raised where a bench command would start its first process."""


@pytest.mark.parametrize(
    ("module", "first_step", "argv"),
    [
        ("bench.compare", "run", ["--no-docs"]),
        ("bench.soak", "run", ["--no-docs"]),
        ("bench.probe", "find_tools", []),
        ("bench.floor", "find_tools", []),
    ],
)
def test_every_bench_command_ends_on_sigterm_through_its_cleanup(
    module: str, first_step: str, argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    def started(*_: object, **__: object) -> None:
        seen.append(signal.getsignal(signal.SIGTERM))
        raise _Started

    monkeypatch.setattr(f"{module}.{first_step}", started)
    try:
        with pytest.raises(_Started):
            importlib.import_module(module).main(argv)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert seen and seen[0] not in (signal.SIG_DFL, signal.SIG_IGN, None)
    handler = seen[0]
    assert callable(handler)
    with pytest.raises(SystemExit) as stopped:
        handler(signal.SIGTERM, None)
    assert stopped.value.code == 128 + signal.SIGTERM


def test_probe_code_variant_runs_a_revisions_interlock_ahead_of_the_installed_one(tmp_path: Path) -> None:
    """`code=REV`: a PYTHONPATH whose `interlock` package, services and generated stubs
    included, is the revision's files (`git archive`), found before the editable install."""
    from bench.probe import code_tree

    path = code_tree("HEAD", tmp_path)
    flow = path / "interlock" / "services" / "router" / "domain" / "flow.py"
    committed = subprocess.run(
        ["git", "show", "HEAD:services/router/domain/flow.py"], capture_output=True, check=True
    ).stdout
    assert flow.read_bytes() == committed
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import interlock.services.router.domain.flow as f, interlock.router.v1.router_pb2 as pb;"
            "print(f.__file__, pb.__file__)",
        ],
        env={**os.environ, "PYTHONPATH": str(path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert where == [str(flow), str(path / "interlock" / "router" / "v1" / "router_pb2.py")]
    assert code_tree("HEAD", tmp_path) == path  # a second variant of the revision shares it
    with pytest.raises(ValueError, match="no commit"):
        code_tree("no-such-revision", tmp_path)
