"""The `interlock up` demo: a few agents of two projects call through the router at once.

All calls of the demo belong to one agent run (`interlock.Run`: run > agent > step > call)
and one trace, so the printed trace id shows the whole run and `interlock traces show RUN`
prints it; costs are read back from ClickHouse through trace-ingest.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass

import grpc

from interlock.budget.v1 import budget_pb2, budget_pb2_grpc
from interlock.client import AsyncClient, ChatResult
from interlock.errors import from_rpc_error
from interlock.mesh import MeshConfig
from interlock.runs import Run, client_tracer_provider


@dataclass(frozen=True)
class Agent:
    name: str
    project: str
    developer: str
    model: str
    prompts: tuple[str, ...]


AGENTS = (
    Agent(
        "planner",
        "search",
        "alice",
        "gpt-4o",
        ("Plan a literature search on solid-state batteries.",),
    ),
    Agent(
        "researcher",
        "search",
        "bob",
        "claude-3-5-haiku-latest",
        (
            "Summarise recent work on lithium metal anodes.",
            "List three open problems in electrolyte design.",
        ),
    ),
    Agent(
        "support-bot",
        "support",
        "carol",
        "gemini-2.0-flash",
        (
            "A customer cannot reset a password. Draft a reply.",
            "Classify this ticket: 'invoice shows wrong VAT'.",
        ),
    ),
)


def _create_key(target: str, project: str, developer: str) -> str:
    with grpc.insecure_channel(target) as channel:
        try:
            return str(
                budget_pb2_grpc.BudgetServiceStub(channel)
                .CreateApiKey(
                    budget_pb2.CreateApiKeyRequest(project=project, developer=developer),
                    timeout=10,
                )
                .api_key
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None


async def _run_agents(cfg: MeshConfig, keys: dict[str, str], run: Run) -> list[ChatResult]:
    async def agent_loop(agent: Agent) -> list[ChatResult]:
        out = []
        async with AsyncClient(cfg.target("router"), api_key=keys[agent.developer]) as client:
            with run.agent(agent.name):
                for i, prompt in enumerate(agent.prompts):
                    with run.step(f"prompt-{i + 1}"):
                        out.append(
                            await client.chat(
                                model=agent.model,
                                messages=[
                                    {"role": "system", "content": f"You are {agent.name}."},
                                    {"role": "user", "content": prompt},
                                ],
                                max_tokens=64,
                            )
                        )
        return out

    results = await asyncio.gather(*(agent_loop(a) for a in AGENTS))
    return [r for rs in results for r in rs]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_demo(cfg: MeshConfig, as_json: bool = False, wait_s: float = 60.0) -> dict[str, object]:
    from interlock.cli import print_cost_table, query_costs

    keys = {a.developer: _create_key(cfg.target("budget"), a.project, a.developer) for a in AGENTS}
    run_id = f"demo-{uuid.uuid4().hex[:8]}"
    say(f"demo: {len(AGENTS)} agents of 2 projects calling through the router (run {run_id})")
    # One trace for the whole run: its spans go to trace-ingest, and the client carries
    # the run's context to the router.
    provider = client_tracer_provider(cfg.target("traceingest"), service_name="interlock-demo")
    try:
        with Run(run_id, tracer_provider=provider) as run:
            results = asyncio.run(_run_agents(cfg, keys, run))
        trace_id = run.trace_id
    finally:
        provider.shutdown()
    say(f"demo: {len(results)} calls answered; waiting for their usage in ClickHouse")
    group_by = ["project", "developer", "model"]
    deadline = time.monotonic() + wait_s
    while True:
        counted = sum(
            int(r["requests"])
            for r in query_costs(cfg.target("traceingest"), ["run_id"], None)
            if r["run_id"] == run_id
        )
        if counted >= len(results) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    rows = query_costs(cfg.target("traceingest"), [*group_by, "run_id"], None)
    rows = [{k: v for k, v in r.items() if k != "run_id"} for r in rows if r["run_id"] == run_id]
    summary: dict[str, object] = {
        "run_id": run_id,
        "trace_id": trace_id,
        "calls": len(results),
        "usage_rows_in_clickhouse": counted,
        "costs": rows,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"\nCost of demo run {run_id} by project, developer and model (from ClickHouse):")
        print_cost_table(rows, group_by)
        print(f"\nRun trace id: {trace_id}")
        print(f"The run as a tree: interlock traces show {run_id}")
        print(f"Costs any time: interlock costs --by {','.join(group_by)}")
    return summary
