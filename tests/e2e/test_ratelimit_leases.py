"""Rate-limit leases through the whole mesh: with INTERLOCK_ROUTER_RATELIMIT_LEASE_MS set,
the router admits calls from leases while a window is under half full and per call after,
and a limit of N a minute still lets exactly N calls through the OpenAI facade."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from interlock.testing import create_key, start_mesh

pytestmark = pytest.mark.e2e

LIMIT = 40


def test_a_limit_admits_exactly_its_calls_when_the_router_leases(tmp_path: Path) -> None:
    limits = tmp_path / "limits.yaml"
    limits.write_text(
        "domain: interlock\n"
        "descriptors:\n"
        "  - key: project\n"
        f"    rate_limit: {{unit: minute, requests_per_unit: {LIMIT}, name: project-rpm}}\n"
    )
    mesh = start_mesh(
        tmp_path / "mesh", limits_path=str(limits), extra_env={"INTERLOCK_ROUTER_RATELIMIT_LEASE_MS": "1000"}
    )
    try:
        key = create_key(mesh, project="leased")
        client = openai.OpenAI(
            base_url=f"http://{mesh.cfg.host}:{mesh.cfg.router_http_port}/v1", api_key=key, max_retries=0
        )
        answered, refused = 0, []
        for i in range(LIMIT + 20):
            try:
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"call {i}"}], max_tokens=8
                )
                answered += 1
            except openai.RateLimitError as exc:
                refused.append(exc)
        assert answered == LIMIT
        assert len(refused) == 20
        first = refused[0]
        assert "project-rpm" in str(first.body)
        assert float(first.response.headers["retry-after"]) > 0
    finally:
        mesh.stop()
    # The router's closing summary: leases admitted calls in the limit's first half (how many
    # depends on how the asks were sized), the rest were decided per call.
    summary = next(
        json.loads(line)
        for line in (mesh.log_dir / "router.log").read_text().splitlines()
        if '"rate-limit leases"' in line
    )
    assert 0 < summary["admitted_from_lease"] <= LIMIT // 2, summary
    assert summary["admitted_from_lease"] + summary["decided_per_call"] == LIMIT + 20, summary
