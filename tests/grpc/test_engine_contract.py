"""One gRPC contract, two engines: the same requests get the same statuses and the same behaviour
(sessions, re-send, cancel, deadlines, concurrency, greedy tokens) from the transformers step
engine and from vLLM.

Both serve the same tiny random-weight Qwen2 (head size 64, which vLLM's CPU attention supports).
The transformers server runs in this process; the vLLM server runs `relay cloud serve --engine
vllm` from its own environment (`make vllm` builds .venv-vllm), as deployments run it. Where that
environment is missing the vLLM half is skipped and says why; `make test` builds it first.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from common.ready import READY_PREFIX, read_ready_address
from common.wire import pb, pb_grpc
from tests.grpc.server_thread import ServerThread, config, tiny_backend
from tests.tiny import build_model

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
MAX_CONTEXT = 512


@pytest.fixture(scope="module")
def wide_llm(tiny_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer_dir = tiny_pair[1]
    return build_model(tmp_path_factory.mktemp("engines") / "tiny-llm-64", tokenizer_dir, seed=3, hidden=256, layers=2)


@pytest.fixture(scope="module", params=["transformers", "vllm"])
def address(request: pytest.FixtureRequest, wide_llm: Path) -> Iterator[str]:
    if request.param == "transformers":
        with ServerThread(tiny_backend(wide_llm), config(max_context=MAX_CONTEXT, max_new_tokens_cap=64)) as server:
            yield server.address
        return
    if not VLLM_PYTHON.is_file():
        pytest.skip("no .venv-vllm: `make vllm` installs the vLLM engine's environment")
    yield from _vllm_server(wide_llm)


def _vllm_server(model_dir: Path) -> Iterator[str]:
    cmd = [
        str(VLLM_PYTHON), "-m", "relaycli.main", "cloud", "serve", "--engine", "vllm", "--llm", str(model_dir),
        "--port", "0", "--set", f"max_context={MAX_CONTEXT}", "--set", "max_new_tokens_cap=64",
        "--set", "vllm.dtype=float32", "--set", "vllm.max_num_seqs=8",
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}
    log = model_dir.parent / "vllm-server.log"
    with open(log, "w") as err:
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    address = read_ready_address(child, 600)
    try:
        assert address, f"the vLLM server did not start (exit {child.poll()}); log:\n{log.read_text()[-3000:]}"
        yield address
    finally:
        child.terminate()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()


@pytest.fixture
def stub(address: str) -> Iterator[pb_grpc.RelayServiceStub]:
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.RelayServiceStub(channel)


def relay(stub, timeout: float = 60, **fields) -> list:  # type: ignore[no-untyped-def]
    fields.setdefault("max_new_tokens", 4)
    return list(stub.Relay(pb.RelayRequest(**fields), timeout=timeout))


def tokens(chunks: list) -> list[int]:
    return [i for c in chunks[:-1] for i in c.tokens.ids]


def code_of(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"delta_ids": [10**6]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"delta_ids": [5], "max_new_tokens": 10**6}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"delta_ids": [5], "max_new_tokens": 0}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"delta_ids": [5], "context_len": 3}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"delta_ids": []}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"delta_ids": [5] * (MAX_CONTEXT + 10)}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"session_id": "nope", "delta_ids": [5]}, grpc.StatusCode.FAILED_PRECONDITION),
        ({"delta_ids": [5], "sampling": pb.SamplingParams(temperature=-1)}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_requests_get_the_same_status(stub, fields: dict, expected: grpc.StatusCode) -> None:  # type: ignore[no-untyped-def]
    assert code_of(lambda: relay(stub, **fields)) == expected
    assert relay(stub, delta_ids=[5, 6, 7])[-1].done.usage.completion_tokens == 4, "still serving"


def test_model_info_names_the_engine(stub, address: str) -> None:  # type: ignore[no-untyped-def]
    info = stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.engine in ("transformers", "vllm") and info.max_context == MAX_CONTEXT
    assert info.model_id == "tiny-llm-64" and info.eos_token_ids and len(info.tokenizer_sha256) == 64


def test_a_session_continues_exactly_like_a_stateless_call(stub) -> None:  # type: ignore[no-untyped-def]
    """Greedy: relaying in three steps on a session gives the tokens one stateless call gives for
    the same final context; the server tracks the context length; usage adds up."""
    session = stub.OpenSession(pb.OpenSessionRequest()).session_id
    prompt, context = [11, 12, 13, 14, 15, 16, 17, 18], []
    first = relay(stub, session_id=session, delta_ids=prompt)
    context = prompt + tokens(first)
    assert first[-1].done.context_len == len(context)
    second = relay(stub, session_id=session, context_len=len(context), delta_ids=[21, 22])
    context += [21, 22] + tokens(second)
    done = second[-1].done
    assert done.context_len == len(context)
    assert done.usage.prompt_tokens + done.usage.cached_tokens == len(context) - len(tokens(second))
    stateless = relay(stub, delta_ids=context[: -len(tokens(second))])
    assert tokens(stateless) == tokens(second), "the session's cache changes nothing about the tokens"


def test_a_lost_session_is_resent_in_full(stub) -> None:  # type: ignore[no-untyped-def]
    session = stub.OpenSession(pb.OpenSessionRequest()).session_id
    chunks = relay(stub, session_id=session, delta_ids=[31, 32, 33])
    assert stub.CloseSession(pb.CloseSessionRequest(session_id=session)).existed
    assert code_of(lambda: relay(stub, session_id=session, context_len=7, delta_ids=[9])) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    fresh = stub.OpenSession(pb.OpenSessionRequest()).session_id
    resent = relay(stub, session_id=fresh, delta_ids=[31, 32, 33, *tokens(chunks), 9])
    assert resent[-1].done.context_len == 3 + 4 + 1 + 4


def test_out_of_step_context_is_refused(stub) -> None:  # type: ignore[no-untyped-def]
    session = stub.OpenSession(pb.OpenSessionRequest()).session_id
    relay(stub, session_id=session, delta_ids=[5, 6, 7])
    assert code_of(lambda: relay(stub, session_id=session, context_len=4, delta_ids=[8])) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )


def test_stop_ids_and_the_length_limit(stub) -> None:  # type: ignore[no-untyped-def]
    greedy = tokens(relay(stub, delta_ids=[1, 2, 3], max_new_tokens=6))
    assert len(greedy) == 6 or relay(stub, delta_ids=[1, 2, 3], max_new_tokens=6)[-1].done.finish_reason == (
        pb.FINISH_REASON_EOS
    )
    stopped = relay(stub, delta_ids=[1, 2, 3], max_new_tokens=6, stop_ids=[greedy[0]])
    assert tokens(stopped) == [greedy[0]] and stopped[-1].done.finish_reason == pb.FINISH_REASON_EOS


def test_a_cancelled_stream_drops_its_session_and_the_server_goes_on(stub) -> None:  # type: ignore[no-untyped-def]
    session = stub.OpenSession(pb.OpenSessionRequest()).session_id
    call = stub.Relay(pb.RelayRequest(session_id=session, delta_ids=[5, 6], max_new_tokens=64), timeout=60)
    next(call)  # the first token arrived: generation is under way
    call.cancel()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the server closes the session once it sees the cancel
        if code_of(lambda: relay(stub, session_id=session, context_len=3, delta_ids=[7])) == (
            grpc.StatusCode.FAILED_PRECONDITION
        ):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the cancelled session was not dropped")
    assert relay(stub, delta_ids=[5, 6])[-1].done.usage.completion_tokens == 4


def test_a_deadline_ends_the_relay_and_the_server_goes_on(stub) -> None:  # type: ignore[no-untyped-def]
    assert code_of(lambda: relay(stub, timeout=0.001, delta_ids=[5, 6], max_new_tokens=64)) == (
        grpc.StatusCode.DEADLINE_EXCEEDED
    )
    assert relay(stub, delta_ids=[5, 6])[-1].done.usage.completion_tokens == 4


def test_concurrent_sessions_all_complete_with_their_own_tokens(stub) -> None:  # type: ignore[no-untyped-def]
    prompts = [[40 + i, 50 + i, 60 + i] for i in range(6)]
    alone = [tokens(relay(stub, delta_ids=p, max_new_tokens=8)) for p in prompts]

    def one(prompt: list[int]) -> list[int]:
        session = stub.OpenSession(pb.OpenSessionRequest()).session_id
        return tokens(relay(stub, session_id=session, delta_ids=prompt, max_new_tokens=8))

    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(one, prompts))
    assert together == alone, "batching sessions together changes no session's greedy tokens"


def _serve_vllm(python: Path, model_dir: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [str(python), "-m", "relaycli.main", "cloud", "serve", "--engine", "vllm", "--llm", str(model_dir),
           "--port", "0", *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def test_vllm_missing_is_one_line_and_a_failed_exit(wide_llm: Path) -> None:
    import sys

    run = _serve_vllm(Path(sys.executable), wide_llm)  # this environment has no vLLM
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "the vllm engine needs vLLM" in run.stderr and "make vllm" in run.stderr


@pytest.mark.parametrize(
    ("extra", "env", "says"),
    [
        (["--set", "vllm.block_size=16"], {}, "multiple of 32 on CPU"),
        ([], {"VLLM_CPU_KVCACHE_SPACE": "100000"}, "no memory for the KV cache"),
    ],
)
def test_vllm_that_cannot_start_says_why_and_exits(wide_llm: Path, extra: list[str], env: dict, says: str) -> None:
    if not VLLM_PYTHON.is_file():
        pytest.skip("no .venv-vllm: `make vllm` installs the vLLM engine's environment")
    run = _serve_vllm(VLLM_PYTHON, wide_llm, *extra, env=env)
    assert run.returncode != 0 and READY_PREFIX not in run.stdout
    assert says in run.stderr.strip().splitlines()[-1], run.stderr[-2000:]
