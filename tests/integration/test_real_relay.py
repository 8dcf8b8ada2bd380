"""The real pair through the product path: ONNX SLM (int8) on onnxruntime, the real 1.5B LLM in the
embedded cloud on loopback, the relay in between. Marked `real` (cached downloads)."""

from __future__ import annotations

import pytest

from edge.app import open_engine
from edge.config import EdgeConfig
from edge.events import RelayFinished, RelayStarted, TokenEvent
from edge.relay.settings import RelaySettings

pytestmark = pytest.mark.real

QUESTION = "Tom has 3 boxes with 4 apples in each box. He eats 2 apples. How many apples does he have left?"


@pytest.fixture(scope="module")
def engine():
    with open_engine(EdgeConfig()) as engine:
        yield engine


def test_embedded_cloud_is_up(engine) -> None:
    assert engine.cloud_state == "embedded" and engine.link is not None
    assert engine.link.info.model_id == "qwen2.5-coder-1.5b-instruct"


def test_slm_alone_answers_the_apple_problem(engine) -> None:
    stream = engine.answer([{"role": "user", "content": QUESTION}], RelaySettings(policy="never", max_new_tokens=260))
    list(stream)
    assert "10" in stream.text and stream.record.relays == []
    assert stream.record.slm_tokens > 20 and stream.record.llm_share == 0.0


def test_relay_splices_llm_tokens_into_the_answer(engine) -> None:
    settings = RelaySettings(policy="entropy", entropy_tau=0.95, fixed_n=6, max_relays=2, max_new_tokens=40)
    stream = engine.answer([{"role": "user", "content": QUESTION}], settings)
    events = list(stream)
    finished = [e for e in events if isinstance(e, RelayFinished)]
    assert len(finished) == 2 and all(e.tokens_received == 6 for e in finished)
    llm_spans = [text for source, text in stream.spans if source == "llm"]
    assert len(llm_spans) == 2 and all(span.strip() for span in llm_spans)
    llm_tokens = [e for e in events if isinstance(e, TokenEvent) and e.source == "llm"]
    assert "".join(e.text for e in llm_tokens) == "".join(llm_spans)
    record = stream.record
    assert record.llm_tokens == 12 and 0 < record.llm_share < 1
    assert all(r.bytes_up > 0 and r.bytes_down > 0 and r.cloud_server_ms > 0 for r in record.relays)
    assert record.relays[1].cloud_cached_tokens > 0  # the second relay reused the session's KV cache
    assert 0 < record.money < record.money_llm_only * 10


def test_the_shipped_call_head_scores_the_real_slm(engine) -> None:
    """The default pair's head is loaded and, on this answer, fires only where it gives >= tau."""
    assert engine.call_head is not None and engine.call_head.meta["slm"] == "qwen2.5-coder-0.5b-instruct"
    prompt = engine.vocab.encode_chat([{"role": "user", "content": QUESTION}])
    first = engine.call_head.probability(engine.slm.prefill(prompt))
    assert 0.0 < first < 1.0
    below = RelaySettings(policy="head", head_tau=min(first * 0.5, 0.5), fixed_n=4, max_relays=1, max_new_tokens=30)
    events = list(engine.answer([{"role": "user", "content": QUESTION}], below))
    started = [e for e in events if isinstance(e, RelayStarted)]
    assert [(e.trigger, e.n_granted) for e in started] == [("head", 4)]
