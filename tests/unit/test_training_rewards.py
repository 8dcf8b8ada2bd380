"""The reward table, scenario by scenario, and the per-group classification."""

from __future__ import annotations

import pytest

from training.rewards import (
    AnswerOutcome,
    call_ratio,
    classify_group,
    difficulty_reward,
    group_rewards,
    make_trl_reward,
    simple_reward,
)


def out(correct: bool, llm: int = 0, total: int = 100, relays: int | None = None) -> AnswerOutcome:
    return AnswerOutcome(correct, llm, total, relays if relays is not None else int(llm > 0))


def test_rho_counts_tokens_received_not_requested() -> None:
    # asked for 500 (the request is not in the outcome at all), received 12 of a 120-token answer
    assert out(True, llm=12, total=120).rho == pytest.approx(0.1)
    assert call_ratio(0, 0) == 0.0
    assert call_ratio(50, 40) == 1.0  # capped


def test_simple_reward() -> None:
    assert simple_reward(out(True)) == 1.0
    assert simple_reward(out(True, llm=25)) == pytest.approx(0.75)
    assert simple_reward(out(False, llm=10)) == pytest.approx(-0.1)


@pytest.mark.parametrize(
    ("group", "scenario"),
    [
        ([out(True), out(False, llm=10)], "student_solvable"),
        ([out(True, llm=10), out(True)], "student_solvable"),
        ([out(True, llm=10), out(False)], "teacher_dependent"),
        ([out(False, llm=10), out(False)], "teacher_unsolvable"),
    ],
)
def test_classify_group(group, scenario) -> None:
    assert classify_group(group) == scenario


@pytest.mark.parametrize(
    ("outcome", "scenario", "reward"),
    [
        # student-solvable: independence is worth 1.5; calling costs rho; wrong is 0
        (out(True), "student_solvable", 1.5),
        (out(True, llm=20), "student_solvable", 0.8),
        (out(False), "student_solvable", 0.0),
        (out(False, llm=20), "student_solvable", 0.0),
        # teacher-dependent: stubbornness (wrong without calling) is -1
        (out(True, llm=20), "teacher_dependent", 0.8),
        (out(False), "teacher_dependent", -1.0),
        (out(False, llm=20), "teacher_dependent", 0.0),
        # teacher-unsolvable: calling is rewarded with rho (exploration)
        (out(False, llm=30), "teacher_unsolvable", 0.3),
        (out(False), "teacher_unsolvable", 0.0),
    ],
)
def test_difficulty_reward_table(outcome, scenario, reward) -> None:
    assert difficulty_reward(outcome, scenario) == pytest.approx(reward)


def test_called_means_a_relay_even_if_it_brought_nothing() -> None:
    failed_call = AnswerOutcome(False, llm_tokens=0, answer_tokens=50, relays=1)
    assert failed_call.called and failed_call.rho == 0.0
    assert difficulty_reward(failed_call, "teacher_dependent") == 0.0


def test_groups_are_per_question_not_per_batch() -> None:
    # Question a: one answer correct alone -> student-solvable. Question b: only a caller is
    # correct -> teacher-dependent, so b's stubborn answer gets -1. A batch-level classification
    # (the released code) would call everything student-solvable and give that answer 0.
    ids = ["a", "b", "a", "b"]
    outcomes = [out(True), out(True, llm=10), out(False), out(False)]
    rewards, scenarios = group_rewards(ids, outcomes, "difficulty")
    assert scenarios == ["student_solvable", "teacher_dependent", "student_solvable", "teacher_dependent"]
    assert rewards == pytest.approx([1.5, 0.9, 0.0, -1.0])


def test_trl_adapter_grades_and_logs() -> None:
    logged: dict[str, float] = {}
    kept: list[dict] = []
    reward = make_trl_reward("difficulty", grader=lambda text, gold: text.strip() == gold, sink=kept.extend)
    rewards = reward(
        completions=["x"] * 3,
        id=["q", "q", "q"],
        answer=["7", "7", "7"],
        answer_text=["7", "8", "7"],
        llm_tokens=[0, 0, 5],
        answer_tokens=[10, 10, 10],
        relays=[0, 0, 1],
        log_metric=lambda k, v: logged.__setitem__(k, v),
    )
    assert rewards == pytest.approx([1.5, 0.0, 0.5])
    assert logged["relay/accuracy"] == pytest.approx(2 / 3)
    assert logged["relay/llm_share"] == pytest.approx(5 / 30)
    assert logged["relay/reward_student_solvable"] == pytest.approx(2 / 3)
    assert [(r["text"], r["correct"], r["reward"], r["relays"]) for r in kept] == [
        ("7", True, 1.5, 0), ("8", False, 0.0, 0), ("7", True, 0.5, 1)
    ]  # fmt: skip
    assert {r["scenario"] for r in kept} == {"student_solvable"}


def test_command_look_alikes_cost_a_format_penalty() -> None:
    # what the CPU run wrote once its relays were spent: plain tokens that bring no help
    clean = AnswerOutcome(True, 4, 100, 1)
    one = AnswerOutcome(True, 4, 100, 1, near_misses=1)
    many = AnswerOutcome(True, 4, 100, 1, near_misses=5)
    assert simple_reward(one) == pytest.approx(simple_reward(clean) - 0.5)
    assert difficulty_reward(many, "teacher_dependent") == pytest.approx(
        difficulty_reward(clean, "teacher_dependent") - 1.0
    )
    assert difficulty_reward(AnswerOutcome(False, 0, 100, 0, near_misses=1), "student_solvable") == -0.5


@pytest.mark.parametrize(
    ("texts", "relays", "field", "counts", "expected"),
    [
        # look-alikes: plain tokens that bring no help
        (["a <call>4</call>b 7", "a < call>4</call>b 7", "<line>5</line><line>4</line> 7"], [1, 0, 0],
         "near_misses", [0, 1, 2], [1.0, 0.5, 0.0]),
        # a valid command past the relays the answer got; N = 0 is "no call", never unserved
        (["a <call>4</call>b <call>4</call>c 7", "a <call>4</call>b <call>0</call>c 7", "a <call>4</call>b 7"],
         [1, 1, 0], "unserved", [1, 0, 1], [0.5, 1.0, 0.5]),
    ],
)  # fmt: skip
def test_trl_adapter_prices_look_alikes_and_unserved_commands(texts, relays, field, counts, expected) -> None:
    kept: list[dict] = []
    reward = make_trl_reward("simple", grader=lambda text, gold: text.endswith(gold), sink=kept.extend)
    rewards = reward(
        completions=["x"] * 3, id=["q"] * 3, answer=["7"] * 3, answer_text=texts,
        llm_tokens=[0, 0, 0], answer_tokens=[10, 10, 10], relays=relays,
    )  # fmt: skip
    assert [r[field] for r in kept] == counts
    assert rewards == pytest.approx(expected)
