"""The call head: its algebra (hidden-state weights carried onto the logits), its file, its fit
and the `head` policy in the relay machine."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import UserError
from edge.events import RelayStarted
from edge.relay.call_head import CallHead, direction_from_hidden
from edge.relay.machine import RelayMachine
from edge.relay.settings import RelaySettings
from tests.fakes import TOKEN_BYTES, ScriptedSlm, encode, run_machine, text_of, view
from training.call_head import auc, fit_logistic, fold_of, labels, precision_at, to_head
from training.config import HeadSection


def _unsure_head(vocab: int = len(TOKEN_BYTES)) -> CallHead:
    """Fires (p ~ 1) where ScriptedSlm is unsure (top-1 probability ~0.4), silent where it is ~1."""
    return CallHead(np.zeros(vocab, dtype=np.float32), w_log_top1=-40.0, w_entropy=0.0, bias=-20.0)


def test_direction_carries_hidden_weights_onto_logits() -> None:
    rng = np.random.default_rng(0)
    e, w = rng.normal(size=(300, 16)), rng.normal(size=16)
    v = direction_from_hidden(w, e)
    for h in rng.normal(size=(5, 16)):
        assert float(v @ (e @ h)) == pytest.approx(float(w @ h), rel=1e-4, abs=1e-4)


def test_head_from_a_fit_scores_logits_as_the_fit_scores_states() -> None:
    """to_head undoes the standardisation and maps w onto the logits: the shipped head gives on the
    SLM's logits the probability the fit gives on [h, log top-1, entropy]."""
    rng = np.random.default_rng(1)
    e = rng.normal(size=(200, 12)) * 0.5
    hidden = rng.normal(size=(400, 12))
    logits = hidden @ e.T
    head0 = CallHead(np.zeros(200, np.float32), 0, 0, 0)
    extra = np.array([head0.features(row)[1:] for row in logits])
    x = np.concatenate([hidden, extra], axis=1).astype(np.float32)
    y = (hidden[:, 0] + 0.5 * extra[:, 1] + rng.normal(size=400) * 0.3) > 1.0
    w, b, mean, std = fit_logistic(x, y, l2=1e-3)
    head = to_head(w, b, mean, std, e, {})
    fitted = 1 / (1 + np.exp(-(((x - mean) / std) @ w + b)))
    served = np.array([head.probability(row.astype(np.float32)) for row in logits])
    assert np.abs(served - fitted).max() < 1e-3
    assert auc(served, y) > 0.9


def test_auc_matches_pair_counting_with_ties() -> None:
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 5, size=60).astype(float)
    y = rng.random(60) < 0.3
    pairs = [(s > t) + 0.5 * (s == t) for s in scores[y] for t in scores[~y]]
    assert auc(scores, y) == pytest.approx(np.mean(pairs))
    assert precision_at(np.arange(100.0), np.arange(100) >= 98, share=0.02) == 1.0


def test_labels_are_strong_disagreements_on_numbers() -> None:
    tb = list(TOKEN_BYTES)
    arrays = {
        "slm_token": np.array([ord("a"), ord("3"), ord("4"), ord("5")]),
        "llm_top_id": np.array([ord("b"), ord("7"), ord("4"), ord("8")]),
        "llm_p_slm_token": np.array([0.01, 0.01, 0.9, 0.3], dtype=np.float32),
        "llm_top_p": np.array([0.9, 0.9, 0.9, 0.6], dtype=np.float32),
    }
    section = HeadSection()
    assert labels(arrays, section, tb).tolist() == [False, True, False, False]
    anywhere = section.model_copy(update={"divergence_on": "any"})
    assert labels(arrays, anywhere, tb).tolist() == [True, True, False, False]


def test_folds_are_by_question_and_stable() -> None:
    ids = [f"math/{i}" for i in range(400)]
    folds = [fold_of(i, 5) for i in ids]
    assert folds == [fold_of(i, 5) for i in ids]
    assert all(50 < folds.count(k) < 110 for k in range(5))


def test_file_round_trip_and_bad_files(tmp_path) -> None:
    head = CallHead(np.linspace(-1, 1, len(TOKEN_BYTES), dtype=np.float32), -2.0, 0.5, -1.0, {"slm": "x"})
    head.save(tmp_path / "h.npz")
    back = CallHead.load(tmp_path / "h.npz")
    logits = np.random.default_rng(3).normal(size=len(TOKEN_BYTES)).astype(np.float32)
    assert back.probability(logits) == pytest.approx(head.probability(logits))
    assert back.meta["slm"] == "x" and back.digest == head.digest
    np.savez(tmp_path / "other.npz", direction=np.zeros(3))
    (tmp_path / "text.npz").write_text("not a zip")
    for path, match in ((tmp_path / "missing.npz", "no call head at"), (tmp_path / "other.npz", "is not a call head"),
                        (tmp_path / "text.npz", "is not a call head")):  # fmt: skip
        with pytest.raises(UserError, match=match) as err:
            CallHead.load(path)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="vocabulary of"):
        head.probability(np.zeros(7, np.float32))


def test_head_policy_calls_where_the_head_fires_and_discards_that_sample() -> None:
    slm = ScriptedSlm(encode("abcdef"), uncertain=frozenset({2}))
    settings = RelaySettings(policy="head", head_tau=0.5, fixed_n=3)
    run = run_machine(slm, [(encode("XYZ"), "length")], settings, call_head=_unsure_head().probability)
    assert [c.n for c in run.calls] == [3]
    assert text_of(run.calls[0].context) == "Q?ab"
    assert run.answer == "abXYZcdef"
    assert run.kinds(RelayStarted)[0].trigger == "head"
    silent = run_machine(ScriptedSlm(encode("abcdef"), uncertain=frozenset({2})), [], settings.model_copy(
        update={"head_tau": 0.999}), call_head=lambda logits: 0.5)  # fmt: skip
    assert silent.calls == [] and silent.answer == "abcdef"


def test_head_policy_needs_a_head() -> None:
    with pytest.raises(ValueError, match="needs a call head"):
        RelayMachine(encode("Q?"), view(), RelaySettings(policy="head"))


def test_simulated_relays_skip_what_the_llm_writes_and_stop_at_the_limit() -> None:
    from training.call_head import operating_points, simulate_relays

    scores = np.array([0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9])
    assert simulate_relays(scores, 0.5, fixed_n=3, max_relays=4) == [0, 3, 6]
    assert simulate_relays(scores, 0.5, fixed_n=1, max_relays=2) == [0, 1]
    y = np.zeros(8, dtype=bool)
    y[4] = True
    (point,) = operating_points([(scores, y)], [0.5], fixed_n=3, max_relays=4)
    assert point == {"tau": 0.5, "relays_per_answer": 3.0, "llm_share": 1.125, "relays_on_divergence": 0.3333}
