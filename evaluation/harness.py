"""Run relay policies over benchmark problems: resumable per-problem JSONL plus a summary.

Why this shape: an evaluation on a 2-core CPU takes hours, so every answer is appended to
`<run>/rows.jsonl` as soon as it is graded and a restarted run skips what is finished. Rows are
keyed by (benchmark, problem id, policy key); the key hashes the policy's full `RelaySettings`, so
changing a limit re-runs instead of mixing configurations. A row that fails records its reason and
the run goes on: `data:` (unreadable row) and `grade:` (grader raised) errors are final, `answer:`
errors (the engine or the cloud failed) are retried by the next resume, since they are usually
transient. The harness talks to an `Answerer`, so tests use a scripted fake and the CLI adapts the
real `RelayEngine` with `make_answerer`.

Policy labels: `never` (SLM alone), `cloud-only` (LLM alone), `learned[@BIAS]` (the SLM's own
`<call>N</call>`), `head[@TAU]` (the call head, edge/relay/call_head.py), `entropy` / `entropy@TAU`,
`random@RATE` (per-token rate), and `random-token`: the random policy at the rate whose expected LLM
share equals the share the last `learned` or `head` policy measured in the same run
(`baselines.random_token_rate`), so it always runs after that one.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from common.errors import UserError
from edge.cost import CostRecord, cloud_failures
from edge.relay.settings import RelaySettings
from evaluation.baselines import random_token_rate
from evaluation.data import Problem
from evaluation.grading import Grade, grade
from evaluation.prompts import messages_for

ROWS_FILE = "rows.jsonl"
Grader = Callable[[str, str], Grade]
FIXED_POLICIES = {"never": "never", "cloud-only": "cloud-only", "learned": "learned"}


class Answerer(Protocol):
    def answer(self, messages: list[dict], settings: RelaySettings) -> tuple[str, CostRecord]: ...


class EngineAnswerer:
    """Adapts `edge.relay.driver.RelayEngine`: iterate the stream, return its text and record."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def answer(self, messages: list[dict], settings: RelaySettings) -> tuple[str, CostRecord]:
        stream = self.engine.answer(messages, settings)
        for _event in stream:
            pass
        return stream.text, stream.record


def make_answerer(engine: Any) -> Answerer:
    return EngineAnswerer(engine)


# ----------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class PolicySpec:
    label: str
    settings: RelaySettings
    call_head: str = ""
    """The call head's digest (policy head): another head is another policy."""

    @property
    def key(self) -> str:
        text = self.settings.model_dump_json() + (f"/head={self.call_head}" if self.settings.policy == "head" else "")
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        return f"{self.label}#{digest}"


LEARNED_POLICIES = ("learned", "head")
"""Decisions learned from data: `random-token` is measured against the last of them in a run."""


def parse_policy_list(text: str) -> list[str]:
    """Split `never,learned,entropy@0.3` and put `random-token` after the last learned or head policy."""
    labels = [x.strip() for x in text.split(",") if x.strip()]
    if not labels:
        raise UserError("no policies given")
    if len(set(labels)) != len(labels):
        raise UserError(f"a policy is listed twice in {text!r}")
    if "random-token" in labels:
        learned = [x for x in labels if x.partition("@")[0] in LEARNED_POLICIES]
        if not learned:
            raise UserError(
                "random-token matches a learned policy's share: list learned or head too (or use random@RATE)"
            )
        labels.remove("random-token")
        labels.insert(labels.index(learned[-1]) + 1, "random-token")
    for label in labels:
        policy_settings(label, RelaySettings(), learned_share=0.0)  # validate early, before any work
    return labels


def policy_settings(label: str, base: RelaySettings, *, learned_share: float | None = None) -> RelaySettings:
    """RelaySettings for one policy label, on top of the run's base settings."""
    name, _, arg = label.partition("@")
    try:
        if name in FIXED_POLICIES and not arg:
            return base.model_copy(update={"policy": FIXED_POLICIES[name]})
        if name == "learned" and arg:
            return RelaySettings.model_validate(base.model_dump() | {"policy": "learned", "call_bias": float(arg)})
        if name == "head":
            tau = float(arg) if arg else base.head_tau
            return RelaySettings.model_validate(base.model_dump() | {"policy": "head", "head_tau": tau})
        if name == "entropy":
            tau = float(arg) if arg else base.entropy_tau
            return RelaySettings.model_validate(base.model_dump() | {"policy": "entropy", "entropy_tau": tau})
        if name == "random" and arg:
            return RelaySettings.model_validate(base.model_dump() | {"policy": "random", "random_rate": float(arg)})
        if name == "random-token" and not arg:
            if learned_share is None:
                raise UserError("random-token needs the learned policy's measured share first")
            rate = random_token_rate(learned_share, base.fixed_n)
            return base.model_copy(update={"policy": "random", "random_rate": rate})
    except ValueError as exc:  # float() or pydantic validation
        raise UserError(f"bad policy {label!r}: {str(exc).splitlines()[0]}") from None
    raise UserError(
        f"unknown policy {label!r}; use never, cloud-only, learned[@BIAS], head[@TAU], random-token, "
        "random@RATE, entropy[@TAU]"
    )


# ----------------------------------------------------------------------------- rows


def row_key(row: Mapping) -> tuple[str, str, str]:
    return (row["benchmark"], row["id"], row["key"])


def read_rows(path: Path) -> dict[tuple[str, str, str], dict]:
    """Rows of a run file, the last row per key winning; a torn last line (a kill) is skipped."""
    rows: dict[tuple[str, str, str], dict] = {}
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
                rows[row_key(row)] = row
            except (ValueError, KeyError, TypeError):
                continue
    return rows


def is_finished(row: Mapping | None) -> bool:
    return row is not None and not str(row.get("error", "")).startswith("answer:")


def append_row(path: Path, row: dict) -> None:
    """Append one row and flush; a torn last line left by a kill is first closed with a newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = False
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as fh:
            fh.seek(-1, 2)
            torn = fh.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(("\n" if torn else "") + json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()


def problem_seed(base_seed: int, problem: Problem) -> int:
    """A per-problem seed, so random policies are reproducible and independent across problems."""
    digest = hashlib.sha256(f"{problem.benchmark}/{problem.id}".encode()).hexdigest()
    return (base_seed + int(digest[:8], 16)) % 2**31


def answer_one(answerer: Answerer, problem: Problem, spec: PolicySpec, grader: Grader) -> dict:
    """Answer and grade one problem; every failure becomes an error row with its reason."""
    return grade_row(answer_row(answerer, problem, spec), grader)


def answer_row(answerer: Answerer, problem: Problem, spec: PolicySpec) -> dict:
    """The ungraded row of one answer (an error row if the engine or the cloud failed)."""
    row: dict = {"benchmark": problem.benchmark, "id": problem.id, "policy": spec.label, "key": spec.key}
    row |= {"gold": problem.answer, "correct": None, "error": "", "pred": "", "text": "", "cost": None}
    if problem.error:
        return row | {"error": f"data: {problem.error}", "seconds": 0.0}
    settings = spec.settings.model_copy(update={"seed": problem_seed(spec.settings.seed, problem)})
    start = time.perf_counter()
    try:
        text, record = answerer.answer(messages_for(problem.question), settings)
    except Exception as exc:  # the engine or the cloud failed: record it, go on with the next row
        return row | {"error": f"answer: {type(exc).__name__}: {exc}", "seconds": time.perf_counter() - start}
    row |= {"text": text, "cost": record.to_dict(), "seconds": time.perf_counter() - start}
    if failed := cloud_failures(record.fallbacks, spec.settings.policy):
        # The SLM finished alone because the cloud failed: that measures the outage, not the
        # policy. An error row (kept for reading), retried when the run resumes.
        row["error"] = f"answer: cloud failed: {failed[0]}"
    return row


def grade_row(row: dict, grader: Grader) -> dict:
    if row["error"]:
        return row
    try:
        result = grader(row["text"], row["gold"])
    except Exception as exc:
        return row | {"error": f"grade: {type(exc).__name__}: {exc}"}
    return row | {"correct": bool(result.correct), "pred": result.pred}


def run_policy(
    answerer: Answerer | list[Answerer],
    problems: list[Problem],
    spec: PolicySpec,
    rows_path: Path,
    *,
    grader: Grader = grade,
    progress: bool = True,
) -> list[dict]:
    """Run one policy over the problems, skipping finished rows; return this policy's rows."""
    from tqdm import tqdm

    existing = read_rows(rows_path)
    keys = [(p.benchmark, p.id, spec.key) for p in problems]
    todo = [p for p, k in zip(problems, keys, strict=True) if not is_finished(existing.get(k))]
    done = [existing[k] for k in keys if is_finished(existing.get(k))]
    correct, seen = sum(1 for r in done if r["correct"]), len(done)
    bar = tqdm(
        total=len(problems),
        initial=len(done),
        desc=spec.label,
        unit="q",
        disable=not progress,
        file=sys.stderr,
    )
    with bar:
        for row in answer_all(answerer, todo, spec, grader):
            append_row(rows_path, row)  # one writer: rows land whole, in completion order
            existing[row_key(row)] = row
            correct, seen = correct + bool(row["correct"]), seen + 1
            bar.update(1)
            bar.set_postfix(acc=f"{correct / seen:.1%}", refresh=False)
    return [existing[k] for k in keys]


def answer_all(
    answerer: Answerer | list[Answerer], problems: list[Problem], spec: PolicySpec, grader: Grader
) -> Iterator[dict]:
    """Rows as they finish. Several answerers (each its own SLM and cloud session) answer that many
    problems at once against one shared cloud; the rows do not depend on which one answered
    (per-problem seeds)."""
    answerers = answerer if isinstance(answerer, list) else [answerer]
    if len(answerers) == 1:
        for problem in problems:
            yield answer_one(answerers[0], problem, spec, grader)
        return
    import queue
    from concurrent.futures import ThreadPoolExecutor, as_completed

    free: queue.Queue = queue.Queue()
    for one in answerers:
        free.put(one)

    def job(problem: Problem) -> dict:
        worker = free.get()
        try:
            return answer_row(worker, problem, spec)
        finally:
            free.put(worker)

    with ThreadPoolExecutor(len(answerers)) as pool:
        for future in as_completed([pool.submit(job, p) for p in problems]):
            yield grade_row(future.result(), grader)  # here: math-verify's timeouts need the main thread


# ----------------------------------------------------------------------------- summary


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return statistics.fmean(items) if items else 0.0


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(rows: list[dict]) -> dict:
    """Accuracy over graded rows (errors counted apart) and per-answer cost figures."""
    errors = [r for r in rows if r["error"]]
    graded = [r for r in rows if r["correct"] is not None]
    costs = [r["cost"] for r in rows if r["cost"]]
    answer_tokens = sum(c["answer_tokens"] for c in costs)
    llm_tokens = sum(c["llm_tokens"] for c in costs)
    walls = [c["wall_ms"] / 1000 for c in costs]
    stages = [r["error"].split(":", 1)[0] for r in errors]
    return {
        "n": len(rows),
        "graded": len(graded),
        "correct": sum(1 for r in graded if r["correct"]),
        "accuracy": sum(1 for r in graded if r["correct"]) / len(graded) if graded else 0.0,
        "outcomes": {r["id"]: bool(r["correct"]) for r in graded},
        "errors": len(errors),
        "errors_by_stage": {s: stages.count(s) for s in sorted(set(stages))},
        "answered": len(costs),
        "llm_share": llm_tokens / answer_tokens if answer_tokens else 0.0,
        "answer_tokens_mean": answer_tokens / len(costs) if costs else 0.0,
        "relays_per_answer": _mean(c["n_relays"] for c in costs),
        "bytes_up_per_answer": _mean(c["bytes_up"] for c in costs),
        "bytes_down_per_answer": _mean(c["bytes_down"] for c in costs),
        "latency_s_mean": _mean(walls),
        "latency_s_p50": _quantile(walls, 0.5),
        "latency_s_p90": _quantile(walls, 0.9),
        "edge_s_per_answer": _mean(c["edge_ms"] / 1000 for c in costs),
        "cloud_s_per_answer": _mean(c["cloud_ms"] / 1000 for c in costs),
        "edge_s_total": sum(c["edge_ms"] for c in costs) / 1000,
        "cloud_s_total": sum(c["cloud_ms"] for c in costs) / 1000,
        "money_total": sum(c["money"] for c in costs),
        "money_per_answer": _mean(c["money"] for c in costs),
        "money_llm_only_per_answer": _mean(c["money_llm_only"] for c in costs),
        "fallbacks": sum(len(c["fallbacks"]) for c in costs),
        "hit_limit_share": _mean(float(c.get("finish") == "max_tokens") for c in costs),
    }


# ----------------------------------------------------------------------------- a whole run


def write_manifest(run_dir: Path, benchmark: str, slice_name: str, problems: list[Problem]) -> dict:
    """`run.json`: what this run directory evaluates; one benchmark per directory.

    Policies of an earlier invocation are kept when the problem list is unchanged (so baselines
    and the learned policy can be run separately); a new problem list starts the list afresh.
    """
    path = run_dir / "run.json"
    ids = [p.id for p in problems]
    policies: list[dict] = []
    if path.is_file():
        old = json.loads(path.read_text())
        if old["benchmark"] != benchmark:
            raise UserError(f"{run_dir} holds a {old['benchmark']} run; use another --out for {benchmark}")
        policies = old["policies"] if old["problem_ids"] == ids else []
    manifest = {"benchmark": benchmark, "slice": slice_name, "problem_ids": ids, "policies": policies}
    _save_manifest(run_dir, manifest)
    return manifest


def _save_manifest(run_dir: Path, manifest: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "run.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(run_dir / "run.json")


def run_suite(
    answerer: Answerer | list[Answerer],
    problems: list[Problem],
    labels: list[str],
    base: RelaySettings,
    run_dir: Path,
    *,
    benchmark: str,
    slice_name: str,
    grader: Grader = grade,
    progress: bool = True,
    call_head: str = "",
) -> dict:
    """Run every policy in order (random-token after learned) and record them in `run.json`.
    `call_head`: the digest of the engine's call head, which keys the `head` policy's rows."""
    manifest = write_manifest(run_dir, benchmark, slice_name, problems)
    learned_share: float | None = None
    for label in labels:
        spec = PolicySpec(label, policy_settings(label, base, learned_share=learned_share), call_head)
        entry = {"label": label, "key": spec.key, "settings": spec.settings.model_dump()}
        if spec.settings.policy == "head":
            entry["call_head"] = call_head
        manifest["policies"] = [p for p in manifest["policies"] if p["label"] != label] + [entry]
        _save_manifest(run_dir, manifest)  # before running, so a report of an interrupted run shows it
        rows = run_policy(answerer, problems, spec, run_dir / ROWS_FILE, grader=grader, progress=progress)
        if label.partition("@")[0] in LEARNED_POLICIES:  # random-token matches the last one listed
            learned_share = summarize(rows)["llm_share"]
    return manifest


def load_run(run_dir: Path) -> tuple[dict, dict[str, dict]]:
    """The manifest and each policy's summary, from `run.json` and `rows.jsonl`."""
    path = run_dir / "run.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no run.json)")
    manifest = json.loads(path.read_text())
    rows = read_rows(run_dir / ROWS_FILE)
    summaries = {}
    for policy in manifest["policies"]:
        keys = [(manifest["benchmark"], pid, policy["key"]) for pid in manifest["problem_ids"]]
        mine = [rows[k] for k in keys if k in rows]
        summaries[policy["label"]] = summarize(mine) | {"settings": policy["settings"], "key": policy["key"]}
    return manifest, summaries
