"""Bad requests get the right gRPC status, and the server keeps serving afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from common.wire import pb, pb_grpc


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.RelayServiceStub(channel)


def relay(stub, **fields) -> list:
    fields.setdefault("max_new_tokens", 2)
    return list(stub.Relay(pb.RelayRequest(**fields), timeout=30))


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"delta_ids": [10**6]}, grpc.StatusCode.INVALID_ARGUMENT),  # id outside the vocabulary
        ({"delta_ids": [5], "max_new_tokens": 10**6}, grpc.StatusCode.INVALID_ARGUMENT),  # N above cap
        ({"delta_ids": [5], "max_new_tokens": 0}, grpc.StatusCode.INVALID_ARGUMENT),  # N = 0
        ({"delta_ids": [5], "context_len": 3}, grpc.StatusCode.INVALID_ARGUMENT),  # stateless with a prefix
        ({"delta_ids": []}, grpc.StatusCode.INVALID_ARGUMENT),  # stateless without context
        ({"delta_ids": [5] * 600}, grpc.StatusCode.INVALID_ARGUMENT),  # above max context (512)
        ({"session_id": "nope", "delta_ids": [5]}, grpc.StatusCode.FAILED_PRECONDITION),  # unknown session
    ],
)
def test_invalid_requests(stub, fields: dict, expected: grpc.StatusCode) -> None:
    assert code_of(lambda: relay(stub, **fields)) == expected
    assert relay(stub, delta_ids=[5, 6, 7])[-1].done.usage.completion_tokens == 2  # still serving


def test_out_of_step_context_is_failed_precondition(stub) -> None:
    session = stub.OpenSession(pb.OpenSessionRequest()).session_id
    chunks = relay(stub, session_id=session, delta_ids=[5, 6, 7])
    assert chunks[-1].done.context_len == 5
    assert code_of(lambda: relay(stub, session_id=session, context_len=4, delta_ids=[8])) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    ok = relay(stub, session_id=session, context_len=5, delta_ids=[8])
    assert ok[-1].done.usage.cached_tokens == 4  # 3 prompt + first generated token; the last was unfed


def test_open_session_with_wrong_tokenizer(stub) -> None:
    assert code_of(lambda: stub.OpenSession(pb.OpenSessionRequest(tokenizer_sha256="ab"))) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )


def test_deadline_stops_generation(llm_backend) -> None:
    """The model stops stepping when the deadline passes: counted in the backend, not inferred."""
    import time

    from tests.grpc.server_thread import ServerThread, SlowBackend, config

    counting = SlowBackend(llm_backend, delay_s=0.02)
    with ServerThread(counting, config()) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.RelayServiceStub(channel)
        session = stub.OpenSession(pb.OpenSessionRequest()).session_id
        request = pb.RelayRequest(session_id=session, delta_ids=[5], max_new_tokens=1000)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Relay(request, timeout=0.3))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(0.3)
        steps = counting.steps
        time.sleep(0.5)
        assert counting.steps == steps < 100  # nothing ran after the deadline; far from 1000 steps
        # the cancelled session is dropped; the server keeps serving
        assert code_of(lambda: relay(stub, session_id=session, context_len=1, delta_ids=[6])) == (
            grpc.StatusCode.FAILED_PRECONDITION
        )
        done = relay(stub, delta_ids=[1, 2])[-1].done
        assert done.finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_EOS)


def test_server_side_sampling_parameters(stub) -> None:
    greedy = [c.tokens.ids[0] for c in relay(stub, delta_ids=[1, 2, 3], max_new_tokens=6)[:-1]]
    # top_k=1 is greedy whatever the temperature; the same seed gives the same sample.
    top1 = relay(
        stub, delta_ids=[1, 2, 3], max_new_tokens=6, sampling=pb.SamplingParams(temperature=2.0, top_k=1, seed=3)
    )
    assert [c.tokens.ids[0] for c in top1[:-1]] == greedy
    hot = dict(delta_ids=[1, 2, 3], max_new_tokens=12, sampling=pb.SamplingParams(temperature=5.0, seed=11))
    first, again = relay(stub, **hot), relay(stub, **hot)
    assert [c.tokens.ids[0] for c in first[:-1]] == [c.tokens.ids[0] for c in again[:-1]]
    other = relay(stub, **(hot | {"sampling": pb.SamplingParams(temperature=5.0, seed=12)}))
    assert [c.tokens.ids[0] for c in other[:-1]] != [c.tokens.ids[0] for c in first[:-1]]
    # top_p tiny keeps only the top token: greedy again.
    nucleus = relay(
        stub, delta_ids=[1, 2, 3], max_new_tokens=6, sampling=pb.SamplingParams(temperature=1.0, top_p=1e-6)
    )
    assert [c.tokens.ids[0] for c in nucleus[:-1]] == greedy
    # stop_ids: generation ends on the first greedy token when it is a stop id.
    stopped = relay(stub, delta_ids=[1, 2, 3], max_new_tokens=6, stop_ids=[greedy[0]])
    assert len(stopped) == 2 and stopped[-1].done.finish_reason == pb.FINISH_REASON_EOS
    # logprobs: one per token when asked, log-probabilities (<= 0); none otherwise.
    with_lp = relay(stub, delta_ids=[1, 2, 3], max_new_tokens=3, return_logprobs=True)
    assert all(len(c.tokens.logprobs) == 1 and c.tokens.logprobs[0] <= 0 for c in with_lp[:-1])
    assert all(not c.tokens.logprobs for c in relay(stub, delta_ids=[1, 2, 3], max_new_tokens=3)[:-1])


def test_model_info(stub) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.model_id == "tiny-llm" and info.protocol_version == "relaywire.v1"
    assert len(info.tokenizer_sha256) == 64 and info.eos_token_ids and info.max_context == 512


def test_prometheus_metrics_count_relays(stub, server) -> None:
    import time

    relay(stub, delta_ids=[1, 2, 3], max_new_tokens=3)
    code_of(lambda: relay(stub, delta_ids=[10**6]))
    # The server counts a call in its handler's `finally`, which may run just after the client
    # has its status: wait for the count rather than race it.
    deadline = time.monotonic() + 5
    while 'relay_requests_total{code="INVALID_ARGUMENT"} 1.0' not in _metrics_text(server):
        assert time.monotonic() < deadline, _metrics_text(server)
        time.sleep(0.02)
    text = _metrics_text(server)
    assert 'relay_requests_total{code="OK"} 1.0' in text
    assert "relay_generated_tokens_total 3.0" in text


def test_a_stream_dropped_by_the_client_closes_its_session(stub, server) -> None:
    import time

    store = server.running.servicer.store
    session = stub.OpenSession(pb.OpenSessionRequest()).session_id
    call = stub.Relay(pb.RelayRequest(session_id=session, delta_ids=[5, 6], max_new_tokens=400))
    next(call)  # the first token is out: generation is under way
    call.cancel()
    deadline = time.monotonic() + 5
    while session in store and time.monotonic() < deadline:
        time.sleep(0.02)
    assert session not in store
    assert code_of(lambda: relay(stub, session_id=session, context_len=3, delta_ids=[7])) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )


def test_kv_budget_is_reserved_before_allocating(llm_backend) -> None:
    from tests.grpc.server_thread import ServerThread, config

    per_token = llm_backend.kv_bytes_per_token()
    assert per_token > 0
    with ServerThread(llm_backend, config(max_kv_bytes=per_token * 40)) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.RelayServiceStub(channel)
            # 10 context + 50 new tokens could not fit: refused up front, nothing generated.
            assert code_of(lambda: relay(stub, delta_ids=list(range(1, 11)), max_new_tokens=50)) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED
            )
            assert "relay_generated_tokens_total 0.0" in _metrics_text(server)
            # A relay that fits is served, stateless or not, and releases what it reserved.
            assert relay(stub, delta_ids=list(range(1, 11)), max_new_tokens=20)[-1].HasField("done")
            assert server.running.servicer.store.stateless_reserved == 0


def _metrics_text(server) -> str:
    from prometheus_client import generate_latest

    return generate_latest(server.running.servicer.metrics.registry).decode()


def dying_engine(backend):  # type: ignore[no-untyped-def]
    """A real step engine whose workers 'die' at the first relay, as vLLM's engine core can."""
    from cloud.engine import StepEngine

    class DyingEngine(StepEngine):
        died = False

        def dead(self) -> str | None:
            return "engine core died (test)" if self.died else None

        async def generate(self, state, context, params):  # type: ignore[no-untyped-def]
            self.died = True
            raise RuntimeError("EngineDeadError")
            yield  # an async generator, like every engine's

    return DyingEngine(backend)


async def test_a_dead_engine_turns_health_not_serving_and_stops_the_service(llm_backend) -> None:
    import asyncio

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from cloud.server import serve
    from common.errors import UserError
    from tests.grpc.server_thread import config, free_port

    port = free_port()
    service = asyncio.create_task(serve(dying_engine(llm_backend), config(port=port)))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=30)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        call = pb_grpc.RelayServiceStub(channel).Relay(pb.RelayRequest(delta_ids=[5, 6], max_new_tokens=2))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the edge retries elsewhere / later
        assert "engine core died" in info.value.details()
    with pytest.raises(UserError, match="stopping: engine core died"):  # `relay cloud serve` exits 1
        await asyncio.wait_for(service, timeout=30)


_PARENT = """
import os, subprocess, sys, time
cloud = subprocess.Popen([sys.executable, "-m", "relaycli.main", "cloud", "serve", "--host", "127.0.0.1",
                          "--port", "0", "--llm", sys.argv[1], "--set", "device=cpu",
                          "--set", f"parent_pid={os.getpid()}"])
print(cloud.pid, flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for a reaper that may never come (a container's PID 1)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_cloud_whose_parent_is_killed_stops(tiny_pair) -> None:
    """The embedded cloud's edge killed outright (no cleanup runs) must not leave the LLM running."""
    from common.ready import READY_PREFIX

    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(tiny_pair[1])], stdout=subprocess.PIPE, text=True)
    cloud_pid = int(parent.stdout.readline())
    try:
        assert parent.stdout.readline().startswith(READY_PREFIX)  # the cloud shares its parent's stdout
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 20
        while _running(cloud_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(cloud_pid)
    finally:
        if _running(cloud_pid):
            os.kill(cloud_pid, signal.SIGKILL)
        parent.stdout.close()
