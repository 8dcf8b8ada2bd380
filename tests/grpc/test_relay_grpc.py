"""End to end over a real grpc.aio server on loopback: tiny ONNX SLM on the edge, tiny torch LLM
in the cloud. Equivalences token for token (greedy), fallbacks, auth and status codes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
import torch
from pydantic import SecretStr
from transformers import AutoModelForCausalLM

from edge.cloud_link import CloudError, CloudLink
from edge.events import Notice, TokenEvent
from edge.relay.driver import RelayEngine
from edge.relay.settings import RelaySettings
from edge.runtime import OnnxSlm
from edge.vocab import Vocab
from models.identity import tokenizer_sha256
from tests.grpc.server_thread import ServerThread, SlowBackend, config, free_port

MESSAGES = [{"role": "user", "content": "Tom has 3 boxes with 4 apples in each box."}]


def engine_for(slm: OnnxSlm, vocab: Vocab, address: str | None, tiny_onnx: Path, **link_kw) -> RelayEngine:
    link = None
    if address is not None:
        link = CloudLink(address, timeout_s=30, **link_kw)
        link.connect(tokenizer_sha256(tiny_onnx))
    return RelayEngine(slm, vocab, link)


def run(engine: RelayEngine, settings: RelaySettings):
    stream = engine.answer(MESSAGES, settings)
    events = list(stream)
    return stream, events


def test_cloud_only_equals_llm_alone(server, slm, vocab, tiny_onnx, tiny_pair) -> None:
    engine = engine_for(slm, vocab, server.address, tiny_onnx)
    stream, _ = run(engine, RelaySettings(policy="cloud-only", max_new_tokens=24))
    llm = AutoModelForCausalLM.from_pretrained(tiny_pair[1], dtype=torch.float32).eval()
    prompt = vocab.encode_chat(MESSAGES)
    with torch.no_grad():
        out = llm.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, pad_token_id=0)
    expected = [t for t in out[0, len(prompt) :].tolist() if t not in vocab.eos_ids]
    assert stream.machine.answer_ids == expected
    assert stream.record.llm_share == 1.0 and stream.record.slm_tokens == 0


def test_never_equals_slm_alone(server, slm, vocab, tiny_onnx) -> None:
    engine = engine_for(slm, vocab, server.address, tiny_onnx)
    stream, _ = run(engine, RelaySettings(policy="never", max_new_tokens=24))
    prompt = vocab.encode_chat(MESSAGES)
    slm.reset()
    logits, alone = slm.forward(prompt), []
    while len(alone) < 24 and int(logits.argmax()) not in vocab.eos_ids:
        alone.append(int(logits.argmax()))
        logits = slm.forward([alone[-1]])
    assert stream.machine.answer_ids == alone
    assert stream.record.relays == []


def test_cached_session_equals_stateless_resend(server, slm, vocab, tiny_onnx) -> None:
    # entropy with tau ~1 relays at every SLM position: many relays in one answer.
    settings = RelaySettings(policy="entropy", entropy_tau=0.999, fixed_n=3, max_relays=5, max_new_tokens=40)
    cached, _ = run(engine_for(slm, vocab, server.address, tiny_onnx), settings)
    stateless, _ = run(engine_for(slm, vocab, server.address, tiny_onnx, stateless=True), settings)
    assert len(cached.record.relays) == 5
    assert cached.machine.answer_ids == stateless.machine.answer_ids
    prefilled = sum(r.cloud_prompt_tokens for r in cached.record.relays)
    resent = sum(r.cloud_prompt_tokens for r in stateless.record.relays)
    final_context = len(cached.machine.llm_context)
    assert prefilled <= final_context * 1.05 < resent
    assert all(r.cloud_cached_tokens > 0 for r in cached.record.relays[1:])


def test_lost_session_is_resent_transparently(server, slm, vocab, tiny_onnx) -> None:
    settings = RelaySettings(policy="entropy", entropy_tau=0.999, fixed_n=2, max_relays=3, max_new_tokens=30)
    engine = engine_for(slm, vocab, server.address, tiny_onnx)
    baseline, _ = run(engine, settings)
    # Drop every session on the server between relays: the link must re-send and the answer not change.
    original = engine.link.relay

    def relay_after_eviction(*args, **kwargs):
        for sid in list(server.running.servicer.store._sessions):
            server.running.servicer.store.close(sid)
        yield from original(*args, **kwargs)

    engine.link.relay = relay_after_eviction
    again, _ = run(engine, settings)
    assert again.machine.answer_ids == baseline.machine.answer_ids
    assert any(r.resent_full_context for r in again.record.relays)


def test_fallback_when_server_dies_mid_stream(llm_backend, slm, vocab, tiny_onnx) -> None:
    slow = SlowBackend(llm_backend, delay_s=0.05)
    server = ServerThread(slow, config()).__enter__()
    engine = engine_for(slm, vocab, server.address, tiny_onnx)
    stream = engine.answer(MESSAGES, RelaySettings(policy="cloud-only", max_new_tokens=30))
    events = []
    for event in stream:
        events.append(event)
        if isinstance(event, TokenEvent) and event.source == "llm" and server.running is not None:
            server.stop(grace=0)
    assert any(isinstance(e, Notice) and e.kind == "cloud_unavailable" for e in events)
    assert stream.record.fallbacks and stream.record.relays[0].finish == "error"
    assert stream.record.slm_tokens > 0  # the SLM finished the answer
    assert engine.cloud_state == "reconnecting"  # UNAVAILABLE is transient: retried after a backoff


class FlakyLink:
    """A real CloudLink that fails its first relay the way an overloaded cloud does."""

    def __init__(self, inner: CloudLink, error: CloudError) -> None:
        self.inner, self.error, self.failures = inner, error, 0
        self.address = inner.address

    @property
    def last(self):
        return self.inner.last

    def relay(self, context, n, sampling):
        if self.failures == 0:
            self.failures += 1
            self.inner.last = type(self.inner.last)()
            raise self.error
        yield from self.inner.relay(context, n, sampling)

    def close(self) -> None:
        self.inner.close()


def test_transient_refusal_backs_off_then_relays_again(server, slm, vocab, tiny_onnx) -> None:
    from edge.relay.driver import Backoff

    now = [100.0]
    engine = engine_for(slm, vocab, server.address, tiny_onnx)
    engine.link = FlakyLink(engine.link, CloudError("cloud error RESOURCE_EXHAUSTED: busy", transient=True))
    engine.backoff = Backoff(first_s=5, clock=lambda: now[0])
    settings = RelaySettings(policy="entropy", entropy_tau=0.999, fixed_n=2, max_relays=2, max_new_tokens=10)
    first, _ = run(engine, settings)
    assert first.record.relays[0].error and engine.cloud_state == "reconnecting"
    assert "RESOURCE_EXHAUSTED" in first.record.fallbacks[0]
    waiting, _ = run(engine, settings)  # within the backoff: SLM alone, and the record says why
    assert not waiting.record.relays and waiting.record.fallbacks[0].startswith("cloud reconnecting: ")
    now[0] += 6
    again, _ = run(engine, settings)
    assert len(again.record.relays) == 2 and again.record.llm_tokens > 0 and not again.record.fallbacks
    assert engine.cloud_state == "connected" and engine.backoff.failures == 0


def test_a_real_resource_exhausted_refusal_then_recovery(server, slm, vocab, tiny_onnx) -> None:
    from edge.relay.driver import Backoff

    now = [0.0]
    store = server.running.servicer.store
    engine = engine_for(slm, vocab, server.address, tiny_onnx)
    engine.backoff = Backoff(first_s=1, clock=lambda: now[0])
    settings = RelaySettings(policy="entropy", entropy_tau=0.999, fixed_n=2, max_relays=2, max_new_tokens=8)
    budget, store.max_kv_bytes = store.max_kv_bytes, 1  # the server is out of KV memory
    refused, _ = run(engine, settings)
    assert "RESOURCE_EXHAUSTED" in refused.record.fallbacks[0] and engine.cloud_state == "reconnecting"
    store.max_kv_bytes = budget  # memory is back
    now[0] += 2
    again, _ = run(engine, settings)
    assert len(again.record.relays) == 2 and again.record.llm_tokens > 0 and engine.cloud_state == "connected"


def test_permanent_error_turns_the_cloud_off(server, slm, vocab, tiny_onnx) -> None:
    engine = engine_for(slm, vocab, server.address, tiny_onnx)
    engine.link = FlakyLink(engine.link, CloudError("cloud error UNAUTHENTICATED: wrong token"))
    settings = RelaySettings(policy="entropy", entropy_tau=0.999, fixed_n=2, max_new_tokens=6)
    run(engine, settings)
    later, _ = run(engine, settings)
    assert engine.cloud_state == "offline" and not later.record.relays
    assert later.record.fallbacks == ["cloud offline: cloud error UNAUTHENTICATED: wrong token"]


def test_unreachable_cloud_is_a_clear_error() -> None:
    link = CloudLink("127.0.0.1:1", timeout_s=1)
    with pytest.raises(CloudError, match="unreachable|timed out"):
        link.connect("", timeout_s=1)


def test_an_edge_started_before_its_cloud_answers_alone_then_connects(llm_backend, slm, vocab, tiny_onnx) -> None:
    from edge.app import _connect
    from edge.config import EdgeConfig
    from edge.relay.driver import Backoff

    port = free_port()  # nobody listens there yet
    address = f"127.0.0.1:{port}"
    edge_config = EdgeConfig.model_validate({"cloud": {"address": address, "connect_timeout_s": 1}})
    link, note = _connect(edge_config, address, None, tiny_onnx, vocab.eos_ids)
    assert link is not None and not link.checked and "unreachable" in note
    now = [0.0]
    engine = RelayEngine(slm, vocab, link, cloud_state="reconnecting")
    engine.backoff = Backoff(first_s=5, clock=lambda: now[0])
    settings = RelaySettings(policy="entropy", entropy_tau=0.999, fixed_n=2, max_relays=2, max_new_tokens=8)
    alone, _ = run(engine, settings)
    assert not alone.record.relays and "unreachable" in alone.record.fallbacks[0]
    assert engine.cloud_state == "reconnecting"
    with ServerThread(llm_backend, config(port=port)):
        now[0] += 6
        relayed, _ = run(engine, settings)
    assert len(relayed.record.relays) == 2 and relayed.record.llm_tokens > 0 and not relayed.record.fallbacks
    assert engine.cloud_state == "connected" and link.checked
    link.close()


def test_auth_is_required(llm_backend, slm, vocab, tiny_onnx) -> None:
    with ServerThread(llm_backend, config(auth_token=SecretStr("s3cret"))) as server:
        with pytest.raises(CloudError, match="UNAUTHENTICATED"):
            CloudLink(server.address).connect("")
        good = CloudLink(server.address, token="s3cret")
        assert good.connect(tokenizer_sha256(tiny_onnx)).model_id == "tiny-llm"
        engine = RelayEngine(slm, vocab, good)
        stream, _ = run(engine, RelaySettings(policy="cloud-only", max_new_tokens=4))
        assert stream.record.llm_tokens == 4


def test_tokenizer_mismatch_is_refused(server) -> None:
    with pytest.raises(CloudError, match="different tokenizer"):
        CloudLink(server.address).connect("0" * 64)


def test_health_and_reflection(server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_concurrent_sessions_interleave(llm_backend, tiny_onnx, vocab) -> None:
    """Three answers at once: the server steps them in turn (token timestamps overlap in time),
    instead of finishing one before starting the next; all three are the same greedy answer."""
    results: list[list[int]] = []
    spans: list[tuple[float, float]] = []

    def one(address: str) -> None:
        slm = OnnxSlm.load(tiny_onnx, provider="cpu", threads=1)
        stream = engine_for(slm, vocab, address, tiny_onnx).answer(
            MESSAGES, RelaySettings(policy="cloud-only", max_new_tokens=12)
        )
        stamps = [time.monotonic() for e in stream if isinstance(e, TokenEvent)]
        results.append(stream.machine.answer_ids)
        spans.append((stamps[0], stamps[-1]))

    with ServerThread(SlowBackend(llm_backend, delay_s=0.02), config()) as server:
        threads = [threading.Thread(target=one, args=(server.address,)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert len(results) == 3 and results[0] == results[1] == results[2]
    latest_start = max(start for start, _ in spans)
    earliest_end = min(end for _, end in spans)
    assert latest_start < earliest_end  # every answer was still streaming when the last one began


def test_entropy_answer_survives_a_server_killed_mid_answer(llm_backend, slm, vocab, tiny_onnx) -> None:
    server = ServerThread(SlowBackend(llm_backend, delay_s=0.02), config()).__enter__()
    engine = engine_for(slm, vocab, server.address, tiny_onnx)
    settings = RelaySettings(policy="entropy", entropy_tau=0.999, fixed_n=4, max_relays=3, max_new_tokens=20)
    stream = engine.answer(MESSAGES, settings)
    for event in stream:
        if isinstance(event, TokenEvent) and event.source == "llm" and server.running is not None:
            server.stop(grace=0)
    record = stream.record
    assert record.finish == "max_tokens" and record.answer_tokens == 20  # the SLM finished it
    assert record.relays[-1].error and engine.cloud_state == "reconnecting"
    assert len(stream.machine.answer_ids) == 20 and record.slm_tokens > 0


def test_a_relay_that_times_out_falls_back_to_the_slm(llm_backend, slm, vocab, tiny_onnx) -> None:
    with ServerThread(SlowBackend(llm_backend, delay_s=1.0), config()) as server:
        engine = engine_for(slm, vocab, server.address, tiny_onnx)
        engine.link.timeout_s = 0.5
        engine.link.per_token_s = 0.01  # the deadline stays at its 0.5 s floor
        stream, _ = run(engine, RelaySettings(policy="entropy", entropy_tau=0.999, fixed_n=4, max_new_tokens=8))
    assert "timed out" in stream.record.fallbacks[0] and stream.record.slm_tokens == 8
    assert engine.cloud_state == "reconnecting"


def test_budget_stops_relaying_and_says_so(server, slm, vocab, tiny_onnx) -> None:
    engine = engine_for(slm, vocab, server.address, tiny_onnx)
    settings = RelaySettings(policy="entropy", entropy_tau=0.999, fixed_n=2, max_relays=4, max_new_tokens=16)
    free, _ = run(engine, settings)
    assert len(free.record.relays) == 4
    capped, events = run(engine, settings.model_copy(update={"budget_usd": 1e-12}))
    assert len(capped.record.relays) == 1 and "budget reached" in capped.record.fallbacks
    assert capped.record.answer_tokens == 16


def test_garbage_from_the_cloud_falls_back_to_the_slm(server, slm, vocab, tiny_onnx) -> None:
    engine = engine_for(slm, vocab, server.address, tiny_onnx)
    engine.link.info.vocab_size = 5  # every real id now looks outside the vocabulary
    stream, events = run(engine, RelaySettings(policy="cloud-only", max_new_tokens=8))
    assert "outside the vocabulary" in stream.record.fallbacks[0]
    assert stream.record.llm_tokens == 0 and stream.record.slm_tokens == 8


def test_offline_engine_records_why(slm, vocab) -> None:
    engine = RelayEngine(slm, vocab, None)
    engine.cloud_note = "cloud at x:1 unreachable"
    stream, _ = run(engine, RelaySettings(policy="learned", max_new_tokens=4))
    assert stream.record.fallbacks == ["cloud offline: cloud at x:1 unreachable"]


def test_tls(llm_backend, tmp_path: Path) -> None:
    import subprocess

    from cloud.config import TlsConfig

    key, cert = tmp_path / "server.key", tmp_path / "server.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    with ServerThread(llm_backend, config(tls=TlsConfig(cert_file=cert, key_file=key))) as server:
        assert CloudLink(server.address, tls_ca_file=str(cert)).connect("").model_id == "tiny-llm"
        with pytest.raises(CloudError):
            CloudLink(server.address, timeout_s=2).connect("", timeout_s=2)  # plaintext to a TLS port


def test_wrong_certificate_the_edge_answers_alone_and_says_why(llm_backend, slm, vocab, tiny_onnx, tmp_path) -> None:
    import subprocess

    from cloud.config import TlsConfig
    from edge.app import _connect
    from edge.config import EdgeConfig

    for name in ("server", "other"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(tmp_path / f"{name}.key"),
             "-out", str(tmp_path / f"{name}.pem")],
            check=True, capture_output=True,
        )  # fmt: skip
    tls = TlsConfig(cert_file=tmp_path / "server.pem", key_file=tmp_path / "server.key")
    with ServerThread(llm_backend, config(tls=tls)) as server:
        edge = EdgeConfig.model_validate(
            {"cloud": {"address": server.address, "tls_ca_file": str(tmp_path / "other.pem"), "connect_timeout_s": 2}}
        )
        link, note = _connect(edge, server.address, None, tiny_onnx, vocab.eos_ids)
        assert link is not None and not link.checked
        assert "CERTIFICATE_VERIFY_FAILED" in note, note  # the reason, not just "unreachable"
        engine = RelayEngine(slm, vocab, link, cloud_state="reconnecting")
        stream, _ = run(engine, RelaySettings(policy="cloud-only", max_new_tokens=4))
        assert stream.record.llm_tokens == 0 and stream.record.slm_tokens == 4
        assert stream.record.fallbacks and engine.cloud_state == "reconnecting"
        link.close()


def test_cancel_mid_relay_stops_and_the_next_answer_works(llm_backend, slm, vocab, tiny_onnx) -> None:
    from edge.events import AnswerFinished

    with ServerThread(SlowBackend(llm_backend, delay_s=0.05), config()) as server:
        engine = engine_for(slm, vocab, server.address, tiny_onnx)
        cancel = threading.Event()
        stream = engine.answer(MESSAGES, RelaySettings(policy="cloud-only", max_new_tokens=200), cancel)
        events = []
        for event in stream:
            events.append(event)
            if isinstance(event, TokenEvent):
                cancel.set()
        assert isinstance(events[-1], AnswerFinished) and events[-1].reason == "cancelled"
        assert stream.record.llm_tokens < 5
        again, _ = run(engine, RelaySettings(policy="cloud-only", max_new_tokens=3))
        assert again.record.llm_tokens == 3 and not again.record.fallbacks


def test_second_turn_reuses_the_slm_cache_and_answers_the_same(server, slm, vocab, tiny_onnx) -> None:
    settings = RelaySettings(policy="entropy", entropy_tau=0.999, fixed_n=2, max_relays=2, max_new_tokens=12)
    engine = engine_for(slm, vocab, server.address, tiny_onnx)
    first, _ = run(engine, settings)
    turn2 = [*MESSAGES, {"role": "assistant", "content": first.text}, {"role": "user", "content": "And 5 more?"}]
    warm = engine.answer(turn2, settings)
    list(warm)
    fresh_slm = OnnxSlm.load(tiny_onnx, provider="cpu", threads=1)
    cold = engine_for(fresh_slm, vocab, server.address, tiny_onnx).answer(turn2, settings)
    list(cold)
    assert warm.machine.answer_ids == cold.machine.answer_ids
    assert warm.record.slm_prefill_ms > 0 and len(warm.record.relays) == 2


def test_cloud_only_past_the_server_cap_takes_several_relays(llm_backend, slm, vocab, tiny_onnx) -> None:
    with ServerThread(llm_backend, config(max_new_tokens_cap=8)) as server:
        engine = engine_for(slm, vocab, server.address, tiny_onnx)
        assert engine.link.max_n == 8
        stream, _ = run(engine, RelaySettings(policy="cloud-only", max_new_tokens=20))
    grants = [r.n_granted for r in stream.record.relays]
    assert not stream.record.fallbacks and stream.record.llm_tokens == sum(
        r.tokens_received for r in stream.record.relays
    )
    assert all(g <= 8 for g in grants) and (stream.record.llm_tokens == 20 or stream.record.finish == "llm_eos")


def test_eos_ids_are_compared_with_the_edges(server, tiny_onnx) -> None:
    link = CloudLink(server.address, timeout_s=5)
    info = link.connect(tokenizer_sha256(tiny_onnx), eos_ids=Vocab.load(tiny_onnx).eos_ids)
    with pytest.raises(CloudError, match="ends answers on ids"):
        CloudLink(server.address, timeout_s=5).connect(
            tokenizer_sha256(tiny_onnx), eos_ids=[max(info.eos_token_ids) + 1]
        )
    link.close()


def test_relay_deadline_grows_with_n_and_the_measured_token_time() -> None:
    link = CloudLink("127.0.0.1:1", timeout_s=30)
    assert link.deadline_for(100, 8) == 30  # short relays keep the floor
    link.per_token_s = 0.3
    assert link.deadline_for(0, 1000) == pytest.approx(900)  # 3x (1000 tokens x 0.3 s)


def test_two_relays_on_one_session_queue_and_do_not_interleave(llm_backend) -> None:
    import grpc as grpc_mod

    from common.wire import pb, pb_grpc

    with ServerThread(SlowBackend(llm_backend, delay_s=0.03), config()) as server:
        with grpc_mod.insecure_channel(server.address) as channel:
            stub = pb_grpc.RelayServiceStub(channel)
            session = stub.OpenSession(pb.OpenSessionRequest()).session_id
            first = stub.Relay(pb.RelayRequest(session_id=session, delta_ids=[5], max_new_tokens=6), timeout=30)
            stamps: dict[str, list[float]] = {"first": [], "second": []}
            chunks_first = [next(first)]  # generation is under way, holding the session
            stamps["first"].append(time.monotonic())
            result: list = []

            def second() -> None:
                call = stub.Relay(pb.RelayRequest(session_id=session, context_len=7, delta_ids=[8], max_new_tokens=3))
                for chunk in call:
                    if chunk.HasField("tokens"):
                        stamps["second"].append(time.monotonic())
                    result.append(chunk)

            worker = threading.Thread(target=second)
            worker.start()
            for chunk in first:
                chunks_first.append(chunk)
                if chunk.HasField("tokens"):
                    stamps["first"].append(time.monotonic())
            worker.join(30)
    assert chunks_first[-1].done.context_len == 7  # 1 fed + 6 generated
    done = result[-1].done
    assert done.usage.cached_tokens == 6 and done.timings.queue_ms > 50  # it waited for the first
    assert min(stamps["second"]) > max(stamps["first"])  # one after the other, never interleaved


class SlowPrefill(SlowBackend):
    """The first step of every relay (the prefill) takes `delay_s`; decode steps are quick."""

    def forward(self, cache, ids):
        if len(ids) > 1:
            time.sleep(self.delay_s)
        return self.inner.forward(cache, ids)


def test_cancel_takes_effect_while_waiting_for_the_first_llm_token(llm_backend, slm, vocab, tiny_onnx) -> None:
    with ServerThread(SlowPrefill(llm_backend, delay_s=3.0), config()) as server:
        engine = engine_for(slm, vocab, server.address, tiny_onnx)
        cancel = threading.Event()
        stream = engine.answer(MESSAGES, RelaySettings(policy="cloud-only", max_new_tokens=50), cancel)
        threading.Timer(0.3, cancel.set).start()
        started = time.monotonic()
        events = list(stream)
        waited = time.monotonic() - started
    assert events[-1].reason == "cancelled" and stream.record.llm_tokens == 0
    assert waited < 2.0  # not the 3 s prefill
    assert engine.cloud_state != "offline" and not stream.record.fallbacks  # a cancel is not a cloud failure
