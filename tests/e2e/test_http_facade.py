"""The router's HTTP facade, driven by the official `openai` and `anthropic` SDKs.

Same mesh, same auth, budgets, usage and traces as gRPC: the SDKs only change base_url
and use an Interlock key as their API key.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import grpc
import openai
import pytest

from interlock.mesh import Mesh
from interlock.testing import create_key, start_mesh, wait_for
from interlock.traceingest.v1 import traceingest_pb2, traceingest_pb2_grpc

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = start_mesh(tmp_path_factory.mktemp("facade"))
    try:
        yield m
    finally:
        m.stop()


def base(mesh: Mesh) -> str:
    return f"http://{mesh.cfg.host}:{mesh.cfg.router_http_port}"


def runs_costs(mesh: Mesh, run_id: str) -> traceingest_pb2.CostRow | None:
    with grpc.insecure_channel(mesh.cfg.target("traceingest")) as channel:
        rows = (
            traceingest_pb2_grpc.TraceIngestServiceStub(channel)
            .QueryCosts(traceingest_pb2.QueryCostsRequest(group_by=["run_id"]), timeout=10)
            .rows
        )
    return next((r for r in rows if r.keys[0] == run_id), None)


def test_openai_sdk_chat_and_stream(mesh: Mesh) -> None:
    key = create_key(mesh, "facade", "olivia")
    client = openai.OpenAI(
        base_url=base(mesh) + "/v1",
        api_key=key,
        max_retries=0,
        default_headers={"x-interlock-run-id": "facade-run-1"},
    )
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello facade"}], max_tokens=16
    )
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    pieces = []
    usage = None
    for chunk in client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream me some words please"}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(pieces) >= 2 and usage is not None
    row = wait_for(
        lambda: (r if (r := runs_costs(mesh, "facade-run-1")) and r.requests == 2 else None), "two facade usage rows"
    )
    assert row.input_tokens == completion.usage.prompt_tokens + usage.prompt_tokens
    models = client.models.list()
    owners = {m.id: m.owned_by for m in models.data}
    assert owners["gpt-4o-mini"] == "openai"


def test_anthropic_sdk_messages_and_stream(mesh: Mesh) -> None:
    key = create_key(mesh, "facade", "paul")
    client = anthropic.Anthropic(
        base_url=base(mesh), api_key=key, max_retries=0, default_headers={"x-interlock-run-id": "facade-run-2"}
    )
    message = client.messages.create(
        model="gpt-4o-mini",
        max_tokens=16,
        system="be brief",
        messages=[{"role": "user", "content": "hello from anthropic sdk"}],
    )
    assert message.content[0].type == "text" and message.content[0].text
    assert message.usage.output_tokens > 0
    with client.messages.stream(
        model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": "stream it please now"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.usage.output_tokens > 0
    wait_for(lambda: (r if (r := runs_costs(mesh, "facade-run-2")) and r.requests == 2 else None), "usage rows")


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_bad_input_gets_openai_shaped_4xx_and_records_nothing(mesh: Mesh) -> None:
    key = create_key(mesh, "facade-bad", "quinn")
    url = base(mesh) + "/v1/chat/completions"
    auth = {"authorization": f"Bearer {key}", "x-interlock-run-id": "facade-bad-run"}
    good = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5}
    cases: list[tuple[bytes, dict[str, str], int, str | None]] = [
        (b"{not json", auth, 400, "body"),
        (json.dumps({**good, "max_tokens": "five"}).encode(), auth, 400, "max_tokens"),
        (json.dumps({**good, "messages": "hi"}).encode(), auth, 400, "messages"),
        (json.dumps({**good, "model": "no-such-model"}).encode(), auth, 400, "model"),
        (json.dumps({**good, "messages": []}).encode(), auth, 400, "messages"),
        (json.dumps(good).encode(), {}, 401, None),
        (json.dumps(good).encode(), {"authorization": "Bearer wrong"}, 401, None),
    ]
    for body, headers, status, param in cases:
        code, payload = _post(url, body, headers)
        assert code == status, (body, payload)
        assert set(payload["error"]) >= {"message", "type", "param", "code"}
        if param is not None:
            assert payload["error"]["param"] == param, payload
    client = openai.OpenAI(base_url=base(mesh) + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base(mesh) + "/v1", api_key="nope", max_retries=0).models.list()
    # One good call; once it is counted, nothing else of that run was.
    _post(url, json.dumps(good).encode(), auth)
    row = wait_for(lambda: runs_costs(mesh, "facade-bad-run"), "the good call's usage row")
    assert row.requests == 1
