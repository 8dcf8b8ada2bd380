"""Fit the call head (`relay train head`): where will the LLM strongly disagree with the SLM?

Reads `relay train head-data`'s folder, labels every answer position with the warm-up's divergence
criterion, fits an L2 logistic regression on [hidden state, log top-1, entropy] (standardised), and
measures it on held-out *questions* against the signal the entropy controller uses (the top-1
probability) and the entropy itself: ROC AUC, average precision, and the precision of the top 2 %
of positions (about the rate a 4-relay budget spends). The head kept is refitted on every question.

Written to `<out_dir>/head/`: `call_head.npz` (edge/relay/call_head.py) and `report.json`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from common.errors import UserError
from edge.relay.call_head import CallHead, direction_from_hidden
from training.insertion import is_math_token

TOP_SHARE = 0.02
HEAD_TAUS = (0.03, 0.05, 0.07, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.5)
ENTROPY_TAUS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def labels(arrays: dict[str, np.ndarray], head_cfg, token_bytes) -> np.ndarray:
    """Divergence positions: the LLM gives the SLM's token <= max_p_slm and its own >= min_p_llm."""
    strong = (
        (arrays["llm_top_id"] != arrays["slm_token"])
        & (arrays["llm_p_slm_token"] <= head_cfg.max_p_slm)
        & (arrays["llm_top_p"] >= head_cfg.min_p_llm)
    )
    if head_cfg.divergence_on == "math":
        math = [is_math_token(token_bytes[a]) or is_math_token(token_bytes[b])
                for a, b in zip(arrays["slm_token"].tolist(), arrays["llm_top_id"].tolist(), strict=True)]  # fmt: skip
        strong &= np.array(math, dtype=bool)
    return strong


def fold_of(question_id: str, folds: int) -> int:
    """A question's cross-validation fold: stable, from a hash of its id."""
    digest = hashlib.sha256(f"relayllm/head/{question_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % folds


def design(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """[h, log top-1, entropy] per position, float32."""
    extra = np.stack([np.log(np.maximum(arrays["slm_top1"], 1e-12)), arrays["slm_entropy"]], axis=1)
    return np.concatenate([arrays["hidden"].astype(np.float32), extra.astype(np.float32)], axis=1)


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float, steps: int = 200
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """L2 logistic regression on standardised columns; returns (weights, bias, mean, std) with the
    weights on the *standardised* columns."""
    import torch

    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y.astype(np.float32))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.tensor([float(np.log((y.mean() + 1e-6) / (1 - y.mean() + 1e-6)))], requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), float(b.item()), mean, std


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC by ranks (Mann-Whitney), ties averaged."""
    pos = int(y.sum())
    if pos == 0 or pos == len(y):
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))


def average_precision(scores: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(-scores, kind="mergesort")
    hits = y[order].astype(np.float64)
    if not hits.sum():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def precision_at(scores: np.ndarray, y: np.ndarray, share: float = TOP_SHARE) -> float:
    k = max(1, int(round(share * len(scores))))
    return float(y[np.argsort(-scores, kind="mergesort")[:k]].mean())


def signal_report(scores: np.ndarray, y: np.ndarray) -> dict:
    return {
        "auc": round(auc(scores, y), 4),
        "average_precision": round(average_precision(scores, y), 4),
        f"precision_top{int(TOP_SHARE * 100)}pct": round(precision_at(scores, y), 4),
    }


def simulate_relays(scores: np.ndarray, tau: float, *, fixed_n: int, max_relays: int) -> list[int]:
    """Positions where a controller calling at score >= tau would relay on this answer, skipping the
    `fixed_n` positions each relay hands to the LLM. An estimate from the SLM-alone answer (after a
    real relay the SLM goes on from the LLM's text), used to pick a tau for a target share."""
    fired, pos = [], 0
    while pos < len(scores) and len(fired) < max_relays:
        if scores[pos] >= tau:
            fired.append(pos)
            pos += fixed_n
        else:
            pos += 1
    return fired


def operating_points(
    per_answer: list[tuple[np.ndarray, np.ndarray]], taus, *, fixed_n: int, max_relays: int
) -> list[dict]:
    """For each tau: simulated relays per answer, LLM share, and the share of relays that land on a
    divergence or within the `fixed_n` tokens before one (so the LLM writes that position)."""
    points = []
    for tau in taus:
        relays = hits = tokens = 0
        for scores, y in per_answer:
            fired = simulate_relays(scores, tau, fixed_n=fixed_n, max_relays=max_relays)
            relays += len(fired)
            hits += sum(bool(y[p : p + fixed_n].any()) for p in fired)
            tokens += len(scores)
        points.append({
            "tau": tau,
            "relays_per_answer": round(relays / len(per_answer), 3),
            "llm_share": round(relays * fixed_n / max(tokens, 1), 4),
            "relays_on_divergence": round(hits / relays, 4) if relays else None,
        })  # fmt: skip
    return points


def to_head(
    w: np.ndarray, b: float, mean: np.ndarray, std: np.ndarray, output_matrix: np.ndarray, meta: dict
) -> CallHead:
    """Undo the standardisation and carry the hidden-state weights onto the logits."""
    raw = w / std
    bias = b - float((raw * mean).sum())
    hidden = output_matrix.shape[1]
    direction = direction_from_hidden(raw[:hidden], output_matrix)
    return CallHead(direction, float(raw[hidden]), float(raw[hidden + 1]), bias, meta)


def answer_parts(rows, head_cfg, token_bytes) -> list[tuple[np.ndarray, np.ndarray]]:
    """(design, labels) of each answer, computed once for the folds, the report and the final fit."""
    return [(design(a), labels(a, head_cfg, token_bytes)) for _, a in rows]


def out_of_fold(rows, parts, head_cfg) -> list[np.ndarray]:
    """Every answer's head probabilities from a head fitted without its question (k folds by
    question); `parts` from `answer_parts`."""
    folds = [fold_of(r["id"], head_cfg.folds) for r, _ in rows]
    if len(set(folds)) < 2:
        raise UserError(f"need questions in at least two folds to measure the head (have {len(rows)} questions)")
    scores: list[np.ndarray] = [np.empty(0)] * len(rows)
    for k in sorted(set(folds)):
        train = [i for i, f in enumerate(folds) if f != k]
        x_tr = np.concatenate([parts[i][0] for i in train])
        y_tr = np.concatenate([parts[i][1] for i in train])
        if not y_tr.any():
            raise UserError("no divergence positions outside one fold: collect more head data")
        w, b, mean, std = fit_logistic(x_tr, y_tr, head_cfg.l2)
        for i, f in enumerate(folds):
            if f == k:
                scores[i] = 1 / (1 + np.exp(-(((parts[i][0] - mean) / std) @ w + b)))
    return scores


def cross_validate(rows, parts, head_cfg) -> dict:
    """The out-of-fold head against the raw signals, and the simulated operating points of
    head@tau and entropy@tau."""
    scores = out_of_fold(rows, parts, head_cfg)
    y_all = np.concatenate([y for _, y in parts])
    x_all = np.concatenate([x for x, _ in parts])
    per_answer = [(s, y) for s, (_, y) in zip(scores, parts, strict=True)]
    unsure = [(1 - a["slm_top1"], y) for (_, a), (_, y) in zip(rows, parts, strict=True)]
    sim = {"fixed_n": head_cfg.fixed_n, "max_relays": head_cfg.max_relays}
    return {
        "folds": head_cfg.folds,
        "out_of_fold": {
            "head": signal_report(np.concatenate(scores), y_all),
            "low_top1": signal_report(-x_all[:, -2], y_all),
            "entropy": signal_report(x_all[:, -1], y_all),
        },
        "simulated": {
            "head@tau": operating_points(per_answer, HEAD_TAUS, **sim),
            "entropy@tau": [  # the entropy controller calls below a top-1 probability tau
                p | {"tau": round(1 - p["tau"], 2)}
                for p in operating_points(unsure, [1 - t for t in ENTROPY_TAUS], **sim)
            ],
        },
    }


def train_head(config, data_dir: Path, *, publish: Path | None = None, say=print) -> str:
    from models.supply import ensure_model
    from training.head_data import load_features
    from training.models import slm_output_matrix, slm_token_bytes

    rows = load_features(data_dir)
    slm_dir = ensure_model(config.models.slm, cache_dir=config.models.cache_dir)
    token_bytes = slm_token_bytes(slm_dir)
    h = config.head
    parts = answer_parts(rows, h, token_bytes)
    report = cross_validate(rows, parts, h)
    say(json.dumps(report["out_of_fold"]))
    x, y = np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])
    w, b, mean, std = fit_logistic(x, y, h.l2)
    meta = {
        "slm": config.models.slm,
        "llm": config.models.llm,
        "questions": len(rows),
        "positions": int(len(y)),
        "positives": int(y.sum()),
        "label": {"max_p_slm": h.max_p_slm, "min_p_llm": h.min_p_llm, "on": h.divergence_on},
        "l2": h.l2,
        "cross_validation": report,
    }
    head = to_head(w, b, mean, std, slm_output_matrix(slm_dir), meta)
    out = Path(config.out_dir) / "head"
    head.save(out / "call_head.npz")
    (out / "report.json").write_text(json.dumps(meta, indent=2) + "\n")
    if publish is not None:
        head.save(publish)
    counts = f"{len(rows)} questions, {int(y.sum())} divergences of {len(y)} positions"
    return f"call head ({counts}) -> {out / 'call_head.npz'}"
