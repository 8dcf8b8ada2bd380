"""`relay train warmup`: build the warm-up SFT set (JSONL + datasheet), resumably.

For each training question the SLM writes its own answer (onnxruntime, the edge's runtime), which
is graded. Then, by mode (see `training/insertion.py`):

- *paper*: random commands are inserted into the answer, whatever its grade;
- *divergence*: a correct answer becomes a no-call example (the SLM should not call where it
  manages alone); for a wrong one the LLM scores the answer with teacher forcing, the LLM's
  greedy span is spliced in at the earliest strong disagreement and the SLM continues; while the
  answer is still wrong the SLM's new text is scored again and relayed again (up to `relays`).
  Every relayed example keeps its grade (`correct`): one that is still wrong has its commands
  where the LLM disagreed, which is what the warm-up teaches; `keep_unfixed: false` drops them.

Files in the output folder: `examples.jsonl` (one example per line), `progress.jsonl` (one line per
question handled, whatever the outcome, so a restart skips it), `datasheet.json` / `datasheet.md`.
Lines are appended and flushed one by one; a torn last line from a crash is ignored on resume.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from common.errors import UserError
from evaluation.prompts import messages_for, user_prompt
from training.config import TrainConfig, WarmupSection
from training.insertion import (
    Segment,
    agreement_n,
    divergence_points,
    divergence_segments,
    is_math_token,
    paper_segments,
    random_insertions,
    round_up_n,
    segments_text,
)
from training.questions import EvalGuard, Question, check_no_eval_leak
from training.rewards import math_verify_grader

EXAMPLES, PROGRESS = "examples.jsonl", "progress.jsonl"


@dataclass
class Outcome:
    id: str
    outcome: str
    """no_call | skipped | relayed | relayed_wrong | unfixed | inserted | error"""
    slm_correct: bool = False
    seconds: float = 0.0
    detail: str = ""


def read_jsonl(path: Path) -> Iterator[dict]:
    """Rows of a JSONL file; a torn (partially written) last line is skipped."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def repair_jsonl(path: Path) -> None:
    """Cut a torn last line (a crash mid-write) so that the next append starts on a fresh line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def example_row(q: Question, mode: str, segments: list[Segment], calls: list[dict], slm_ok: bool, ok: bool) -> dict:
    return {
        "id": q.id,
        "source": q.source,
        "question": q.question,
        "answer": q.answer,
        "mode": mode,
        "prompt": user_prompt(q.question),
        "segments": [asdict(s) for s in segments],
        "calls": calls,
        "slm_correct": slm_ok,
        "correct": ok,
    }


class WarmupBuilder:
    """One question at a time; `slm` is a `LocalSlm`, `llm` a `TeacherLlm` (or None in paper mode)."""

    def __init__(self, slm, llm, settings: WarmupSection, seed: int = 0, grader=None) -> None:
        self.slm, self.llm, self.s, self.seed = slm, llm, settings, seed
        self.correct = grader or math_verify_grader

    def build(self, q: Question) -> tuple[dict | None, Outcome]:
        t0 = time.perf_counter()
        vocab = self.slm.vocab
        prompt = vocab.encode_chat(messages_for(q.question))
        rng = random.Random(f"{self.seed}/{q.id}")
        answer, _ = self.slm.generate(prompt, self.s.max_new_tokens, self.s.temperature, rng.randrange(2**31))
        text = vocab.decode(answer)
        slm_ok = self.correct(text, q.answer)
        if self.s.mode == "paper":
            inserts = random_insertions(len(answer), rng, self.s.max_commands)
            segments = paper_segments(answer, inserts, vocab.decode)
            calls = [{"n": n, "at_token": pos, "answer_tokens": len(answer)} for pos, n in inserts]
            row = example_row(q, "paper", segments, calls, slm_ok, slm_ok)
            return row, Outcome(q.id, "inserted", slm_ok, time.perf_counter() - t0)
        if slm_ok:
            keep = rng.random() < self.s.keep_correct
            row = example_row(q, "divergence", [Segment("slm", text)], [], True, True) if keep else None
            return row, Outcome(q.id, "no_call" if keep else "skipped", True, time.perf_counter() - t0)
        row, detail = self._splice(q, prompt, answer)
        outcome = "unfixed" if row is None else "relayed" if row["correct"] else "relayed_wrong"
        if row is not None and not row["correct"] and not self.s.keep_unfixed:
            row = None
        return row, Outcome(q.id, outcome, False, time.perf_counter() - t0, detail)

    def _splice(self, q: Question, prompt: list[int], answer: list[int]) -> tuple[dict | None, str]:
        """Relay at the earliest strong disagreement; while the answer is still wrong, relay again in
        what the SLM wrote after the splice, up to `relays` times."""
        s, vocab = self.s, self.slm.vocab
        table = vocab.token_bytes
        content = (lambda tid: is_math_token(table[tid])) if s.divergence_on == "math" else None
        context, own = list(prompt), list(answer)  # `own`: the SLM's latest run of tokens
        segments: list[Segment] = []
        calls: list[dict] = []
        for _ in range(s.relays):
            scores = self.llm.score(context, own)
            points = divergence_points(
                own, scores, max_p_slm=s.max_p_slm, min_p_llm=s.min_p_llm, skip_first=s.skip_first, content=content
            )
            if not points:
                break
            at = min(points[:4])  # the earliest of the strongest few: before the error spreads
            context += own[:at]
            n, taken = self._llm_span(context)
            segments += divergence_segments(vocab.decode(own[:at]), n, vocab.decode(taken), "")
            calls.append(
                {"n": n, "at_token": len(context) - len(prompt), "answer_tokens": len(answer), "llm_tokens": len(taken)}
            )
            context += taken
            own = []
            budget = s.max_new_tokens - (len(context) - len(prompt))
            if (taken and taken[-1] in self.llm.eos_ids) or budget <= 0:
                break
            own, _ = self.slm.generate(context, budget, s.temperature, self.seed)
            if self.correct(segments_text([*segments, Segment("slm", vocab.decode(own))]), q.answer):
                break
        if not calls:
            return None, "no strong divergence"
        if own:
            segments.append(Segment("slm", vocab.decode(own)))
        ok = self.correct(segments_text(segments), q.answer)
        return example_row(
            q, "divergence", segments, calls, False, ok
        ), "" if ok else f"{len(calls)} relay(s), still wrong"

    def _llm_span(self, context: list[int]) -> tuple[int, list[int]]:
        """(N, the LLM's first N greedy tokens) after `context`.

        N is where the SLM, teacher-forced on the LLM's tokens, starts agreeing with them
        (`insertion.agreement_n`), rounded up to d*10^k. The LLM's tokens are produced one at a
        time and generation stops as soon as N is known and reached: most spans are short, and
        the LLM's tokens are the dearest thing here."""
        s, eos = self.s, self.llm.eos_ids
        span: list[int] = []
        preds: list[int] = []
        pred = self.slm.predict_first(context)
        target: int | None = None
        for tid in self.llm.stream(context):
            span.append(tid)
            if tid in eos or (target is not None and len(span) >= target):
                break
            preds.append(pred)
            start = len(preds) - s.agree_run  # the window of the last `agree_run` tokens
            if target is None and start >= s.min_n and preds[start:] == span[start:]:
                target = round_up_n(start)
                if len(span) >= target:
                    break
            if len(span) >= s.max_span and target is None:
                break
            pred = self.slm.predict_next(tid)
        if target is None:  # never agreed (or the LLM ended first): take all it wrote
            words = [t for t in span if t not in eos]
            target = round_up_n(agreement_n(words, preds[: len(words)], min_n=s.min_n, run=s.agree_run))
        return target, span[:target]


def run_warmup(config: TrainConfig, questions: list[Question], out: Path, builder: WarmupBuilder, *, say=print) -> dict:
    """Handle every question not yet in `progress.jsonl`; refresh the datasheet; return it."""
    check_no_eval_leak([q.question for q in questions], EvalGuard.from_benchmarks(config.models.cache_dir))
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(config.model_dump_json(indent=2) + "\n")
    for name in (EXAMPLES, PROGRESS):
        repair_jsonl(out / name)
    done = {row["id"] for row in read_jsonl(out / PROGRESS)}
    todo = [q for q in questions if q.id not in done]
    say(f"warm-up ({config.warmup.mode}): {len(done)} questions done, {len(todo)} to go -> {out}")
    from tqdm import tqdm

    for q in tqdm(todo, desc="warm-up", unit="q", dynamic_ncols=True):
        try:
            row, outcome = builder.build(q)
        except (UserError, ValueError, RuntimeError) as exc:  # one bad question does not end the run
            row, outcome = None, Outcome(q.id, "error", detail=f"{type(exc).__name__}: {exc}")
        if row is not None:
            append_jsonl(out / EXAMPLES, row)
        append_jsonl(out / PROGRESS, asdict(outcome))
    sheet = datasheet(out)
    say(f"{sheet['examples']} examples ({sheet['examples_with_calls']} with calls) in {out / EXAMPLES}")
    return sheet


def datasheet(out: Path) -> dict:
    """Counts and insertion statistics of a warm-up folder, written as JSON and markdown."""
    rows = list(read_jsonl(out / EXAMPLES))
    progress = list(read_jsonl(out / PROGRESS))
    calls = [c for r in rows for c in r["calls"]]
    ns = [c["n"] for c in calls]
    where = [c["at_token"] / max(c["answer_tokens"], 1) for c in calls]
    llm_chars = sum(len(s["text"]) for r in rows for s in r["segments"] if s["source"] == "llm")
    all_chars = sum(len(s["text"]) for r in rows for s in r["segments"]) or 1
    sheet = {
        "questions_handled": len(progress),
        "outcomes": dict(Counter(p["outcome"] for p in progress)),
        "slm_alone_correct": round(sum(p["slm_correct"] for p in progress) / max(len(progress), 1), 4),
        "examples": len(rows),
        "examples_by_source": dict(Counter(r["source"] for r in rows)),
        "examples_with_calls": sum(bool(r["calls"]) for r in rows),
        "calls_per_example": dict(sorted(Counter(len(r["calls"]) for r in rows).items())),
        "n_median": statistics.median(ns) if ns else None,
        "n_values": dict(sorted(Counter(ns).items())),
        "call_position_median": round(statistics.median(where), 3) if where else None,
        "llm_char_share": round(llm_chars / all_chars, 4),
        "seconds_per_question": round(statistics.mean(p["seconds"] for p in progress), 1) if progress else None,
        "seconds_median_by_outcome": {
            o: round(statistics.median(p["seconds"] for p in progress if p["outcome"] == o), 1)
            for o in sorted({p["outcome"] for p in progress})
        },
    }
    (out / "datasheet.json").write_text(json.dumps(sheet, indent=2) + "\n")
    lines = ["# Warm-up datasheet", "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sheet.items()]
    (out / "datasheet.md").write_text("\n".join(lines) + "\n")
    return sheet
