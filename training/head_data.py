"""Data for the call head: the SLM's own greedy answers, what it knew at each token, and where the
LLM strongly disagreed (`relay train head-data`).

For each training question (never an evaluation problem), one at a time:
1. the SLM answers greedily with the evaluation prompt, on onnxruntime as the edge serves it;
2. one forward of the same SLM in torch over prompt + answer gives, for every answer position, the final hidden state
   the next token is read from, the top-1 probability and the entropy of that distribution;
3. one LLM forward over the same ids (teacher forcing) gives the LLM's probability of the SLM's
   token and the LLM's own top choice with its probability.

A position is a *divergence* (the head's positive label) with the warm-up's criterion: the LLM
gives the SLM's token at most `max_p_slm`, its own choice at least `min_p_llm`, and (by default)
either token holds a digit or an operator. The raw scores are stored, so labels can be redrawn.

One `.npz` per question under `features/`, one line per question in `progress.jsonl` after its
file is in place: a run stopped half-way resumes where it stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import UserError
from training.questions import EvalGuard, Question, check_no_eval_leak
from training.warmup import append_jsonl, read_jsonl, repair_jsonl

PROGRESS = "progress.jsonl"


@dataclass(frozen=True)
class Answer:
    question: Question
    prompt: list[int]
    answer: list[int]
    text: str
    finish: str


class HeadDataCollector:
    """`slm` answers on onnxruntime exactly as the edge serves it (training.models.LocalSlm);
    `slm_torch` (the same base weights) gives the hidden states; `llm` scores under teacher forcing."""

    def __init__(self, slm, slm_torch, llm, *, max_new_tokens: int) -> None:
        self.slm, self.slm_torch, self.llm = slm, slm_torch, llm
        self.max_new_tokens = max_new_tokens

    def answer(self, q: Question) -> Answer:
        from evaluation.prompts import messages_for

        prompt = self.slm.vocab.encode_chat(messages_for(q.question))
        ids, finish = self.slm.generate(prompt, self.max_new_tokens, 0.0, 0)
        return Answer(q, prompt, ids, self.slm.vocab.decode(ids), finish)

    def features(self, a: Answer) -> dict[str, np.ndarray]:
        """Per answer position: the SLM's state before the token and the LLM's view of the token."""
        import torch

        ids = torch.tensor([a.prompt + a.answer])
        rows = slice(len(a.prompt) - 1, len(a.prompt) - 1 + len(a.answer))
        target = torch.tensor(a.answer)
        with torch.inference_mode():
            hidden = self.slm_torch.model(input_ids=ids).last_hidden_state[0, rows]
            slm_logp = torch.log_softmax(self.slm_torch.lm_head(hidden).float(), dim=-1)
            llm_logp = torch.log_softmax(self.llm(input_ids=ids).logits[0, rows].float(), dim=-1)
        slm_p = slm_logp.exp()
        llm_top_logp, llm_top = llm_logp.max(dim=-1)
        return {
            "hidden": hidden.float().numpy().astype(np.float16),
            "slm_top1": slm_p.max(dim=-1).values.numpy().astype(np.float32),
            "slm_entropy": (-(slm_p * slm_logp).sum(dim=-1)).numpy().astype(np.float32),
            "slm_token": target.numpy().astype(np.int32),
            "llm_p_slm_token": llm_logp.gather(1, target[:, None])[:, 0].exp().numpy().astype(np.float32),
            "llm_top_id": llm_top.numpy().astype(np.int32),
            "llm_top_p": llm_top_logp.exp().numpy().astype(np.float32),
        }


def collect(
    collector: HeadDataCollector, questions: list[Question], out: Path, *, guard: EvalGuard,
    grade, say=print,
) -> int:  # fmt: skip
    """Answer and score every question not yet in `out/progress.jsonl`; returns how many are done."""
    check_no_eval_leak([q.question for q in questions], guard)
    (out / "features").mkdir(parents=True, exist_ok=True)
    repair_jsonl(out / PROGRESS)
    done = {row["id"] for row in read_jsonl(out / PROGRESS)}
    todo = [q for q in questions if q.id not in done]
    say(f"call-head data: {len(done)} questions done, {len(todo)} to go -> {out}")
    from tqdm import tqdm

    with tqdm(total=len(todo), desc="head data", unit="q", dynamic_ncols=True) as bar:
        for q in todo:
            a = collector.answer(q)
            _save(out, a, collector.features(a), grade)
            bar.update(1)
    return len(list(read_jsonl(out / PROGRESS)))


def _save(out: Path, a: Answer, feats: dict[str, np.ndarray], grade) -> None:
    name = a.question.id.replace("/", "_") + ".npz"
    tmp = out / "features" / f".{name}.tmp.npz"
    np.savez(tmp, **feats)
    os.replace(tmp, out / "features" / name)
    try:
        correct = bool(grade(a.text, a.question.answer).correct)
    except (ValueError, TimeoutError):
        correct = False
    row = {"id": a.question.id, "source": a.question.source, "file": name, "tokens": len(a.answer),
           "finish": a.finish, "correct": correct}  # fmt: skip
    append_jsonl(out / PROGRESS, row)


def load_features(out: Path) -> list[tuple[dict, dict[str, np.ndarray]]]:
    """(progress row, arrays) for every finished question, in the order they were collected."""
    path = out / PROGRESS
    if not path.is_file():
        raise UserError(f"no call-head data at {out} (run `relay train head-data` first)")
    rows = []
    for row in read_jsonl(path):
        with np.load(out / "features" / row["file"]) as z:
            rows.append((row, {k: z[k] for k in z.files}))
    if not rows:
        raise UserError(f"no questions finished in {path}")
    return rows
