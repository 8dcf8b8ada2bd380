"""Hostile input against the real relay server (tiny LLM, grpc.aio on loopback): 10 000 generated
requests — ids out of range, huge or zero N, contexts past the limit, wrong or missing auth,
unknown and closed sessions, out-of-step deltas, NaN and infinite sampling values, cancelled
streams. Each gets the status an oracle expects (never INTERNAL or UNKNOWN), nothing crashes, and
afterwards health is SERVING, a normal relay works and the session and KV caps held.
Then 32 concurrent sessions relay for a bounded time with no errors.

On the real LLM instead of the tiny one (a documented command, not CI: every generated token costs
a 1.5B step on the CPU):
    HOSTILE_LLM=qwen2.5-coder-1.5b-instruct HOSTILE_EXAMPLES=300 pytest tests/grpc/test_hostile.py"""

from __future__ import annotations

import math
import os
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from common.wire import pb, pb_grpc
from tests.grpc.server_thread import ServerThread, config

TOKEN = "hostile-test-token"
CAP, MAX_CONTEXT, MAX_SESSIONS = 8, 256, 16
OK_AUTH = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture(scope="module")
def backend(request):  # type: ignore[no-untyped-def]
    """The tiny LLM, or the model named by HOSTILE_LLM (registry name, hub id or directory)."""
    name = os.environ.get("HOSTILE_LLM")
    if not name:
        return request.getfixturevalue("llm_backend")
    from cloud.backend import TransformersBackend
    from cloud.cli import resolve_llm_dir

    return TransformersBackend.load(resolve_llm_dir(name, None), device="cpu", dtype="auto")


@pytest.fixture(scope="module")
def hostile_server(backend):  # type: ignore[no-untyped-def]
    cfg = config(
        auth_token=SecretStr(TOKEN), max_new_tokens_cap=CAP, max_context=MAX_CONTEXT, max_sessions=MAX_SESSIONS
    )
    with ServerThread(backend, cfg) as server:
        yield server


@pytest.fixture(scope="module")
def channel(hostile_server):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(hostile_server.address) as ch:
        yield ch


class Sessions:
    """Live sessions the generator can aim at, with the context length the server holds."""

    def __init__(self, stub: pb_grpc.RelayServiceStub) -> None:
        self.stub, self.live, self.closed = stub, {}, []

    def open(self) -> str:
        sid = self.stub.OpenSession(pb.OpenSessionRequest(), metadata=OK_AUTH).session_id
        self.live[sid] = 0
        return sid


def mostly(usual: st.SearchStrategy, hostile: st.SearchStrategy) -> st.SearchStrategy:
    """Three in four draws usual, one hostile: every field gets attacked, and plenty of requests
    still get far enough to generate (and to be attacked in combination)."""
    return st.sampled_from([0, 1, 2, 3]).flatmap(lambda k: hostile if k == 0 else usual)


any_float = st.floats(allow_nan=True, allow_infinity=True, width=32)
ids = st.integers(min_value=0, max_value=2**32 - 1)
request = st.fixed_dictionaries(
    {
        "auth": mostly(st.just("ok"), st.sampled_from(["missing", "wrong"])),
        "session": mostly(st.sampled_from(["none", "live", "new"]), st.sampled_from(["unknown", "closed"])),
        "step": mostly(st.just("in-step"), st.sampled_from(["behind", "ahead", "huge"])),
        "delta": mostly(
            st.lists(st.integers(0, 399), min_size=1, max_size=12),
            st.one_of(
                st.just([]),
                st.lists(ids, min_size=1, max_size=4),
                st.integers(MAX_CONTEXT - 4, MAX_CONTEXT + 40).map(lambda n: [7] * n),
            ),
        ),
        "n": mostly(st.integers(1, CAP), st.one_of(st.just(0), st.integers(CAP + 1, 2**32 - 1))),
        "temperature": mostly(st.sampled_from([0.0, 0.7, 1.0]), any_float),
        "top_p": mostly(st.sampled_from([0.0, 0.9, 1.0]), any_float),
        "top_k": mostly(st.sampled_from([0, 1, 50]), st.integers(0, 2**32 - 1)),
        "stop_ids": mostly(st.lists(st.integers(0, 399), max_size=2), st.lists(ids, min_size=1, max_size=3)),
        "cancel": mostly(st.just(False), st.just(True)),
    }
)
ALWAYS_OK = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
}


def expected(r: dict, held: int | None) -> grpc.StatusCode | None:
    """The status the contract gives, in the server's order of checks (None: OK or cancelled)."""
    if r["auth"] != "ok":
        return grpc.StatusCode.UNAUTHENTICATED
    delta, n = r["delta"], r["n"]
    stateless = r["session"] == "none"
    context_len = 0 if held is None else _context_len(r["step"], held)
    sampling_bad = not 0 <= r["temperature"] < math.inf or not 0 <= r["top_p"] <= 1  # NaN fails both
    if (
        not 1 <= n <= CAP
        or any(i >= 400 for i in delta)
        or any(i >= 400 for i in r["stop_ids"])
        or (stateless and not delta)
        or sampling_bad
    ):
        return grpc.StatusCode.INVALID_ARGUMENT
    if r["session"] in ("unknown", "closed"):
        return grpc.StatusCode.FAILED_PRECONDITION
    if held is not None and context_len != held:
        return grpc.StatusCode.FAILED_PRECONDITION
    if held == 0 and not delta:
        return grpc.StatusCode.INVALID_ARGUMENT  # an empty session and nothing new
    if (held or 0) + len(delta) >= MAX_CONTEXT:
        return grpc.StatusCode.INVALID_ARGUMENT
    return None


def _context_len(step: str, held: int) -> int:
    return {"in-step": held, "behind": max(0, held - 1) if held else 1, "ahead": held + 1, "huge": 2**31}[step]


def test_ten_thousand_hostile_requests(hostile_server, channel) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.RelayServiceStub(channel)
    sessions = Sessions(stub)
    seen: dict[str, int] = {}

    examples = int(os.environ.get("HOSTILE_EXAMPLES", "10000"))  # fewer while debugging

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(request)
    def one(r: dict) -> None:
        sid, held = "", None
        if r["session"] == "live":
            sid = next(iter(sessions.live), None) or sessions.open()
        elif r["session"] == "new":
            sid = sessions.open()
        elif r["session"] == "unknown":
            sid = "f" * 32
        elif r["session"] == "closed":
            sid = sessions.closed[-1] if sessions.closed else "0" * 32
        if r["session"] in ("live", "new"):
            held = sessions.live[sid]
        if sid in sessions.live and sid not in hostile_server.running.servicer.store:
            sessions.live.pop(sid)  # evicted (LRU) meanwhile: the server will say FAILED_PRECONDITION
            r = r | {"session": "closed"}
            held = None
        req = pb.RelayRequest(
            session_id=sid,
            context_len=0 if held is None else _context_len(r["step"], held),
            delta_ids=r["delta"],
            max_new_tokens=r["n"],
            stop_ids=r["stop_ids"],
            sampling=pb.SamplingParams(temperature=r["temperature"], top_p=r["top_p"], top_k=r["top_k"], seed=7),
        )
        metadata = {"ok": OK_AUTH, "missing": (), "wrong": (("authorization", "Bearer nope"),)}[r["auth"]]
        call = stub.Relay(req, metadata=metadata, timeout=20)
        code, done = grpc.StatusCode.OK, None
        try:
            for chunk in call:
                if r["cancel"]:
                    call.cancel()
                    break
                if chunk.HasField("done"):
                    done = chunk.done
        except grpc.RpcError as exc:
            code = exc.code()
        if r["cancel"] and code in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED) and sid in sessions.live:
            sessions.live.pop(sid)  # a stream ended mid-generation: the server dropped the session
            sessions.closed.append(sid)
        seen[code.name] = seen.get(code.name, 0) + 1
        assert code in ALWAYS_OK, f"{code} for {r}"
        want = expected(r, held)
        if not r["cancel"]:
            assert code == (want or grpc.StatusCode.OK), f"{code} != {want} for {r}"
        if done is not None and sid in sessions.live:
            sessions.live[sid] = done.context_len
        if code == grpc.StatusCode.FAILED_PRECONDITION and sid in sessions.live:
            sessions.live.pop(sid)  # out of step: a real client would re-send; we drop it

    one()
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    ok = list(stub.Relay(pb.RelayRequest(delta_ids=[5, 6], max_new_tokens=2), metadata=OK_AUTH, timeout=20))
    assert ok[-1].done.usage.completion_tokens == 2
    store = hostile_server.running.servicer.store
    assert len(store) <= MAX_SESSIONS and store.kv_bytes <= store.max_kv_bytes
    n = sum(seen.values())
    assert n >= examples, f"only {n} requests were generated"
    assert seen.get("OK", 0) > 0.05 * n and seen.get("INVALID_ARGUMENT", 0) > 0.2 * n, seen  # both paths exercised


@pytest.fixture(scope="module")
def load_server(backend):  # type: ignore[no-untyped-def]
    per_token = backend.kv_bytes_per_token()
    cfg = config(max_new_tokens_cap=CAP, max_context=MAX_CONTEXT, max_sessions=64, max_kv_bytes=per_token * 20 * 512)
    with ServerThread(backend, cfg) as server:
        yield server


def test_32_concurrent_sessions_for_a_bounded_time(load_server) -> None:  # type: ignore[no-untyped-def]
    """32 users relay for 20 s on one server: no errors, every user served, KV under its cap
    (room for 20 full contexts: idle sessions are evicted to make room, and a user whose session
    went is told FAILED_PRECONDITION and re-sends, as the edge does)."""
    channel = grpc.insecure_channel(load_server.address)
    stub = pb_grpc.RelayServiceStub(channel)
    store = load_server.running.servicer.store
    peak = [0]
    errors: list[str] = []
    relays = [0] * 32
    stop_at = time.monotonic() + 20

    def user(k: int) -> None:
        history: list[int] = []
        sid, context = stub.OpenSession(pb.OpenSessionRequest()).session_id, 0
        while time.monotonic() < stop_at:
            delta = [10 + k, 11]
            req = pb.RelayRequest(session_id=sid, context_len=context, delta_ids=delta, max_new_tokens=4)
            try:
                chunks = list(stub.Relay(req, timeout=60))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    errors.append(f"{exc.code()}: {exc.details()}")
                    return
                sid, context = stub.OpenSession(pb.OpenSessionRequest()).session_id, 0  # evicted: re-send
                chunks = list(stub.Relay(pb.RelayRequest(session_id=sid, delta_ids=history + delta, max_new_tokens=4)))
            history += delta + [i for c in chunks[:-1] for i in c.tokens.ids]
            context = chunks[-1].done.context_len
            relays[k] += 1
            peak[0] = max(peak[0], store.kv_bytes)
            if context > MAX_CONTEXT - 20:  # a long conversation: start a new one
                history, sid, context = [], stub.OpenSession(pb.OpenSessionRequest()).session_id, 0

    threads = [threading.Thread(target=user, args=(k,)) for k in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    channel.close()
    assert not errors, errors
    assert min(relays) >= 1, f"a user was never served: {relays}"
    assert peak[0] <= store.max_kv_bytes and len(store) <= 64
