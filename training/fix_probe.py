"""Which single relay fixes a wrong answer? (`relay train fix-probe`)

For every answer in `relay train head-data`'s folder that the SLM got wrong, one relay is tried at
the position each controller would call first, everything else as served: the LLM writes
`fixed_n` tokens from that position (the SLM's own token there is dropped, as the relay machine
does), then the SLM carries on greedily, and the whole answer is graded. Controllers:

- `head`: the first position whose out-of-fold head probability reaches `head_tau` (a head fitted
  without this question, so the probe measures what the head learned, not what it memorised);
- `entropy`: the first position whose top-1 probability is below `entropy_tau`;
- `divergence`: the first position the LLM strongly disagrees with (the head's label: an oracle);
- `start`: position 0 (the LLM opens the answer);
- `random`: a uniformly drawn position (seeded by the question id).

The fix rate of each, over the same wrong answers, is a paired and far cheaper comparison of where
to call than an evaluation run, and the trials are outcome labels for a head trained on fixes.
One JSON line per trial in `trials.jsonl` (resumable: trials already there are skipped).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np

from training.warmup import append_jsonl, read_jsonl, repair_jsonl

TRIALS = "trials.jsonl"
CHOOSERS = ("head", "entropy", "divergence", "start", "random")


def first_at_or_above(scores: np.ndarray, tau: float) -> int | None:
    hits = np.flatnonzero(scores >= tau)
    return int(hits[0]) if len(hits) else None


def positions(question_id: str, arrays: dict, head_scores: np.ndarray, divergences: np.ndarray, cfg) -> dict:
    """Where each controller would relay first on this answer (None: it would not call)."""
    rng = random.Random(hashlib.sha256(question_id.encode()).hexdigest())
    n = len(arrays["slm_token"])
    return {
        "head": first_at_or_above(head_scores, cfg.probe_head_tau),
        "entropy": first_at_or_above(-arrays["slm_top1"], -cfg.probe_entropy_tau + 1e-12),
        "divergence": int(np.flatnonzero(divergences)[0]) if divergences.any() else None,
        "start": 0,
        "random": rng.randrange(n) if n else None,
    }


class FixProbe:
    def __init__(self, slm, llm, vocab, grade, *, fixed_n: int, max_new_tokens: int) -> None:
        self.slm, self.llm, self.vocab, self.grade = slm, llm, vocab, grade
        self.fixed_n, self.max_new_tokens = fixed_n, max_new_tokens

    def trial(self, prompt: list[int], answer: list[int], at: int, gold: str) -> dict:
        """Relay `fixed_n` LLM tokens at `at`, let the SLM finish, grade the whole answer."""
        head = list(answer[:at])
        span = self.llm.greedy(prompt + head, self.fixed_n)
        words = [t for t in span if t not in self.llm.eos_ids]
        rest: list[int] = []
        if len(words) == len(span):  # the LLM did not end the answer
            budget = self.max_new_tokens - len(head) - len(words)
            if budget > 0:
                rest, _ = self.slm.generate(prompt + head + words, budget, 0.0, 0)
        text = self.vocab.decode(head + words + rest)
        try:
            correct = bool(self.grade(text, gold).correct)
        except (ValueError, TimeoutError):
            correct = False
        return {"correct": correct, "llm_tokens": len(words), "tokens": len(head) + len(words) + len(rest)}


def run_probe(probe: FixProbe, items: list[dict], out: Path, say=print) -> dict:
    """`items`: {id, gold, prompt, answer, positions}; one trial per (id, chooser) not yet done."""
    out.mkdir(parents=True, exist_ok=True)
    repair_jsonl(out / TRIALS)
    done = {(r["id"], r["chooser"]) for r in read_jsonl(out / TRIALS)}
    from tqdm import tqdm

    todo = [(item, c) for item in items for c in CHOOSERS if (item["id"], c) not in done]
    say(f"fix probe: {len(done)} trials done, {len(todo)} to go -> {out}")
    cache: dict[tuple[str, int], dict] = {}  # two controllers often pick the same position
    for item, chooser in tqdm(todo, desc="fix probe", unit="trial", dynamic_ncols=True):
        at = item["positions"][chooser]
        row = {"id": item["id"], "chooser": chooser, "at": at}
        if at is not None:
            key = (item["id"], at)
            if key not in cache:
                cache[key] = probe.trial(item["prompt"], item["answer"], at, item["gold"])
            row |= cache[key]
        append_jsonl(out / TRIALS, row)
    return summarize(out)


def summarize(out: Path) -> dict:
    """Per controller: answers probed, how often it would call, and the fixes its one relay made."""
    by: dict[str, list[dict]] = defaultdict(list)
    for row in read_jsonl(out / TRIALS):
        by[row["chooser"]].append(row)
    summary = {}
    for chooser in CHOOSERS:
        rows = by.get(chooser, [])
        called = [r for r in rows if r["at"] is not None]
        fixed = sum(r["correct"] for r in called)
        summary[chooser] = {
            "answers": len(rows),
            "called": len(called),
            "fixed": fixed,
            "fix_rate": round(fixed / len(rows), 4) if rows else None,
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
