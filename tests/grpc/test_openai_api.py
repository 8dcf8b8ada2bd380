"""The edge's OpenAI-compatible API, through the official `openai` client, over real HTTP
(uvicorn on a loopback port), answering through a real RelayEngine: tiny ONNX SLM, tiny LLM
behind a real gRPC server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import openai
import pytest
import uvicorn

from edge.openai_api import RelayService
from edge.openai_server import make_app
from edge.relay.settings import RelaySettings
from tests.grpc.server_thread import ServerThread, SlowBackend, config
from tests.grpc.test_relay_grpc import engine_for

MODEL = "relayllm/tiny"
KEY = "edge-key"
# entropy with tau 0.999 relays at once: every answer has cloud text, deterministic (greedy)
RELAYING = RelaySettings(policy="entropy", entropy_tau=0.999, fixed_n=4, max_relays=2, max_new_tokens=16)


@contextmanager
def serve_api(engine) -> Iterator[str]:  # type: ignore[no-untyped-def]
    app = make_app(RelayService(engine, RELAYING, MODEL, api_key=KEY))
    http = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not http.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = http.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        http.should_exit = True
        thread.join(10)


@pytest.fixture
def base_url(server, slm, vocab, tiny_onnx) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with serve_api(engine_for(slm, vocab, server.address, tiny_onnx)) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=60)


def ask(client: openai.OpenAI, **kw):  # type: ignore[no-untyped-def]
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tom has 3 boxes."}], **kw)


def test_models_lists_the_relay(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]


def test_completion_carries_the_relay_cost_and_provenance(client: openai.OpenAI) -> None:
    reply = ask(client)
    text = reply.choices[0].message.content
    relay = reply.model_extra["relay"]
    spans = relay["spans"]
    assert "".join(s["text"] for s in spans) == text and "<call>" not in text
    assert {s["source"] for s in spans} == {"slm", "llm"}, "both models wrote part of it"
    usage = reply.usage.model_extra["relay"]
    assert usage["relays"] == 2 and 0 < usage["llm_share"] < 1 and usage["bytes_up"] > 0
    assert reply.usage.completion_tokens == usage["slm_tokens"] + usage["llm_tokens"] == 16
    assert reply.choices[0].finish_reason == "length" and relay["cost"]["money"] > 0


def test_streaming_gives_the_same_text_with_each_chunks_source(client: openai.OpenAI) -> None:
    whole = ask(client).choices[0].message.content
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    pieces = [(c.choices[0].delta.content, c.model_extra.get("relay", {}).get("source")) for c in chunks if c.choices]
    assert "".join(text or "" for text, _ in pieces) == whole
    assert {source for text, source in pieces if text} == {"slm", "llm"}
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-2].model_extra["relay"]["cost"]["llm_tokens"] > 0
    assert chunks[-1].usage.completion_tokens == 16 and chunks[-1].usage.model_extra["relay"]["relays"] == 2


def test_per_request_relay_settings(client: openai.OpenAI) -> None:
    alone = ask(client, extra_body={"relay": {"policy": "never"}}, max_tokens=8)
    assert alone.usage.model_extra["relay"]["relays"] == 0 and alone.usage.completion_tokens == 8
    assert {s["source"] for s in alone.model_extra["relay"]["spans"]} == {"slm"}


@pytest.mark.parametrize(
    ("kw", "error", "says"),
    [
        ({"model": "gpt-4o"}, openai.NotFoundError, "does not exist"),
        ({"n": 2}, openai.BadRequestError, "n:"),
        ({"temperature": 9}, openai.BadRequestError, "temperature"),
        ({"extra_body": {"relay": {"policy": "sometimes"}}}, openai.BadRequestError, "bad relay settings"),
        ({"extra_body": {"tools": []}}, openai.BadRequestError, "tools"),
        ({"messages": []}, openai.BadRequestError, "messages"),
    ],
)
def test_bad_requests_are_clear_400s(client: openai.OpenAI, kw: dict, error: type, says: str) -> None:
    kw = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]} | kw
    with pytest.raises(error) as info:
        client.chat.completions.create(**kw)
    assert says in str(info.value)
    assert ask(client, max_tokens=2).choices[0].message.content is not None, "still serving"


def test_a_prompt_past_the_slms_context_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "apple " * 5000}])
    assert "context" in str(info.value)


def test_wrong_key_is_401(base_url: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="nope", max_retries=0).models.list()
    assert httpx.get(base_url.removesuffix("/v1") + "/health").json()["status"] == "ok"


def test_a_client_that_leaves_mid_stream_frees_the_engine(llm_backend, slm, vocab, tiny_onnx) -> None:  # type: ignore[no-untyped-def]
    """The abandoned answer would take ~10 s (200 cloud tokens at 50 ms a step); the next request
    must not wait for it: the disconnect cancels the answer and its gRPC call."""
    slow = SlowBackend(llm_backend, delay_s=0.05)
    with ServerThread(slow, config()) as cloud:
        with serve_api(engine_for(slm, vocab, cloud.address, tiny_onnx)) as url:
            client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60)
            stream = ask(client, stream=True, max_tokens=200, extra_body={"relay": {"policy": "cloud-only"}})
            next(iter(stream))
            stream.close()  # the client goes away
            started = time.monotonic()
            assert ask(client, max_tokens=4, extra_body={"relay": {"policy": "never"}}).usage.completion_tokens == 4
            assert time.monotonic() - started < 5, "the next request waited for the abandoned answer"
            assert slow.steps < 150, "the cloud kept generating for a client that left"
