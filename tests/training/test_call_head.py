"""The call head on tiny local models, through the CLI: data from the SLM's own answers (resumable),
the fit, the shipped file, and the `head` policy served by the real engine (onnxruntime SLM, the LLM
in process)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.errors import UserError
from edge.events import RelayStarted
from edge.relay.call_head import CallHead
from edge.relay.driver import RelayEngine
from edge.relay.settings import RelaySettings
from edge.runtime import OnnxSlm
from edge.vocab import Vocab
from relaycli.main import main
from tests.grpc.server_thread import tiny_backend
from training.fix_probe import CHOOSERS
from training.head_data import PROGRESS, load_features
from training.questions import EvalGuard

QUESTIONS = [{"id": f"t/{i}", "source": "test", "question": f"Tom has {i} boxes of 4 apples. How many?",
              "answer": str(4 * i)} for i in range(8)]  # fmt: skip


@pytest.fixture()
def run_dir(tmp_path, tiny_pair, tiny_cache, monkeypatch):
    monkeypatch.setattr(EvalGuard, "from_benchmarks", classmethod(lambda cls, cache=None: EvalGuard([])))
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    slm_dir, llm_dir = tiny_pair
    return tmp_path, [
        "--recipe", "smoke", "--out", str(tmp_path), "--set", f"models.slm={slm_dir}", "--set", f"models.llm={llm_dir}",
        "--set", f"models.cache_dir={tiny_cache}", "--set", "models.llm_device=cpu", "--set", "models.threads=1",
    ]  # fmt: skip


def test_head_data_fit_and_serve(run_dir, tiny_pair, tiny_onnx) -> None:
    out, flags = run_dir
    assert main(["train", "head-data", *flags, "--limit", "5"]) == 0
    assert main(["train", "head-data", *flags]) == 0  # resumes: only the 3 new questions are answered
    progress = [json.loads(line) for line in (out / "head-data" / PROGRESS).read_text().splitlines()]
    assert [row["id"] for row in progress] == [q["id"] for q in QUESTIONS]
    for row, arrays in load_features(out / "head-data"):
        n = row["tokens"]
        assert arrays["hidden"].shape == (n, 64) and arrays["llm_top_p"].shape == (n,)
        assert np.all((arrays["slm_top1"] > 0) & (arrays["slm_top1"] <= 1.0 + 1e-6))

    assert main(["train", "head", *flags, "--publish", str(out / "published.npz")]) == 0
    head = CallHead.load(out / "head" / "call_head.npz")
    report = json.loads((out / "head" / "report.json").read_text())
    assert report["positives"] > 0 and set(report["cross_validation"]["out_of_fold"]) == {"head", "low_top1", "entropy"}
    assert CallHead.load(out / "published.npz").digest == head.digest

    vocab = Vocab.load(tiny_onnx)
    slm = OnnxSlm.load(tiny_onnx, provider="cpu", threads=1)
    from training.rollout import InProcessLink

    engine = RelayEngine(slm, vocab, InProcessLink(tiny_backend(tiny_pair[1])), call_head=head)
    messages = [{"role": "user", "content": "Tom has 3 boxes with 4 apples in each box."}]
    eager = RelaySettings(policy="head", head_tau=1e-9, fixed_n=3, max_relays=2, max_new_tokens=30)
    events = list(engine.answer(messages, eager))
    assert [e.trigger for e in events if isinstance(e, RelayStarted)] == ["head", "head"]
    probabilities = [head.probability(slm.prefill(vocab.encode_chat(messages)))]
    assert 0.0 < probabilities[0] < 1.0

    # One relay per controller on each wrong answer, resumable (the tiny SLM gets everything wrong).
    assert main(["train", "fix-probe", *flags, "--limit", "2"]) == 0
    assert main(["train", "fix-probe", *flags, "--limit", "2"]) == 0
    trials = [json.loads(line) for line in (out / "fix-probe" / "trials.jsonl").read_text().splitlines()]
    assert len(trials) == 2 * len(CHOOSERS) and {t["chooser"] for t in trials} == set(CHOOSERS)
    start = next(t for t in trials if t["chooser"] == "start")
    assert start["at"] == 0 and 1 <= start["llm_tokens"] <= 3 and start["tokens"] >= start["llm_tokens"]
    summary = json.loads((out / "fix-probe" / "summary.json").read_text())
    assert summary["start"] == {"answers": 2, "called": 2, "fixed": 0, "fix_rate": 0.0}

    # The edge loads a named head, and refuses one made for another vocabulary before anything starts.
    from edge.app import open_engine
    from edge.config import load_edge_config

    flags_off = [f"models.slm_onnx_dir={tiny_onnx}", "cloud.address=off"]
    with open_engine(load_edge_config(None, [*flags_off, f"models.call_head={out / 'published.npz'}"])) as edge:
        assert edge.call_head is not None and edge.call_head.digest == head.digest
    CallHead(np.zeros(7, np.float32), 0.0, 0.0, 0.0).save(out / "other.npz")
    with pytest.raises(UserError, match="is for another SLM"):
        with open_engine(load_edge_config(None, [*flags_off, f"models.call_head={out / 'other.npz'}"])):
            pass

    bare = RelayEngine(slm, vocab, None)
    with pytest.raises(UserError, match="no call head for this SLM"):
        bare.answer(messages, eager)


def test_head_without_data_is_one_line_error(run_dir, capsys) -> None:
    _, flags = run_dir
    assert main(["train", "head", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no call-head data at") and "\n" not in err
