"""RelayLLM's rewards as pure functions (METHOD.md §3.4), and their TRL adapters.

ρ (the call ratio) is the LLM tokens the answer *received* divided by the answer's length in
tokens (SLM tokens, commands and LLM tokens together), not the N requested: a call that asks for
500 and gets 12 costs 12.

- simple: r = 1(correct) − ρ
- difficulty-aware, classified **per question group** (the G answers to one question; the paper's
  released code classifies the whole batch, which makes nearly every group "student-solvable"):

  | scenario | when | correct, no call | correct, called | wrong, no call | wrong, called |
  |---|---|---|---|---|---|
  | student_solvable | some answer is correct without calling | 1.5 | 1 − ρ | 0 | 0 |
  | teacher_dependent | correct answers exist, all of them called | – | 1 − ρ | −1 | 0 |
  | teacher_unsolvable | no answer is correct | – | – | 0 | ρ |

Both kinds subtract a format penalty for each command look-alike the answer wrote (`< call>4</call>`,
`<line>4</line>`) and each valid command that was not served (past the relay limit): 0.5 each, at
most 1. Neither brings help, but both are ordinary tokens and, unpriced, GRPO learns them (the CPU
run's KL jumped to 0.22 when the policy began writing look-alikes after its relays were spent).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from edge.relay.commands import count_calls, count_near_misses

Scenario = Literal["student_solvable", "teacher_dependent", "teacher_unsolvable"]
INDEPENDENCE_BONUS = 1.5
STUBBORN_PENALTY = -1.0
NEAR_MISS_PENALTY = 0.5
MAX_FORMAT_PENALTY = 1.0


@dataclass(frozen=True)
class AnswerOutcome:
    correct: bool
    llm_tokens: int
    """LLM tokens received into the answer."""
    answer_tokens: int
    relays: int
    near_misses: int = 0
    """Command look-alikes in the answer (`edge.relay.commands.count_near_misses`)."""
    unserved: int = 0
    """Valid commands (N > 0) the answer wrote beyond the relays it got."""

    @property
    def called(self) -> bool:
        return self.relays > 0

    @property
    def rho(self) -> float:
        return call_ratio(self.llm_tokens, self.answer_tokens)

    @property
    def format_penalty(self) -> float:
        return min(MAX_FORMAT_PENALTY, NEAR_MISS_PENALTY * (self.near_misses + self.unserved))


def call_ratio(llm_tokens: int, answer_tokens: int) -> float:
    if answer_tokens <= 0:
        return 0.0
    return min(1.0, llm_tokens / answer_tokens)


def simple_reward(outcome: AnswerOutcome) -> float:
    return float(outcome.correct) - outcome.rho - outcome.format_penalty


def classify_group(group: Sequence[AnswerOutcome]) -> Scenario:
    if any(o.correct and not o.called for o in group):
        return "student_solvable"
    if any(o.correct for o in group):
        return "teacher_dependent"
    return "teacher_unsolvable"


def difficulty_reward(outcome: AnswerOutcome, scenario: Scenario) -> float:
    return _difficulty_table(outcome, scenario) - outcome.format_penalty


def _difficulty_table(o: AnswerOutcome, scenario: Scenario) -> float:
    if scenario == "student_solvable":
        if o.correct:
            return INDEPENDENCE_BONUS if not o.called else 1.0 - o.rho
        return 0.0
    if scenario == "teacher_dependent":
        if o.correct:
            return 1.0 - o.rho
        return STUBBORN_PENALTY if not o.called else 0.0
    return o.rho if o.called else 0.0


def group_rewards(
    group_ids: Sequence[str], outcomes: Sequence[AnswerOutcome], kind: Literal["simple", "difficulty"]
) -> tuple[list[float], list[Scenario | None]]:
    """Rewards for a batch; answers are grouped by their question id, wherever they sit."""
    if kind == "simple":
        return [simple_reward(o) for o in outcomes], [None] * len(outcomes)
    groups: dict[str, list[AnswerOutcome]] = defaultdict(list)
    for gid, o in zip(group_ids, outcomes, strict=True):
        groups[gid].append(o)
    scenario = {gid: classify_group(g) for gid, g in groups.items()}
    rewards = [difficulty_reward(o, scenario[gid]) for gid, o in zip(group_ids, outcomes, strict=True)]
    return rewards, [scenario[gid] for gid in group_ids]


def math_verify_grader(text: str, gold: str) -> bool:
    from evaluation.grading import grade

    try:
        return grade(text, gold).correct
    except Exception:  # an answer the grader cannot parse is not correct
        return False


def graded_outcome(text: str, gold: str, llm_tokens: int, answer_tokens: int, relays: int, grader) -> AnswerOutcome:
    """An answer's outcome from its text: graded, and its command look-alikes and unserved commands counted."""
    unserved = max(0, count_calls(text) - relays)
    return AnswerOutcome(grader(text, gold), llm_tokens, answer_tokens, relays, count_near_misses(text), unserved)


def make_trl_reward(kind: Literal["simple", "difficulty"], grader=math_verify_grader, sink=None):
    """A TRL reward function over the per-completion fields the relay rollout returns; `grader`
    decides correctness (math-verify on the boxed answer, as evaluation does). `sink(rows)`, if
    given, receives one dict per answer (id, text, gold, correct, tokens, relays, reward, scenario)
    so a run keeps what its policy actually wrote."""

    def relay_reward(
        completions,
        id,
        answer,
        answer_text,
        llm_tokens,
        answer_tokens,
        relays,
        log_metric=None,
        **_,  # noqa: A002
    ) -> list[float]:
        outcomes = [
            graded_outcome(text, gold, int(lt), int(at), int(r), grader)
            for text, gold, lt, at, r in zip(answer_text, answer, llm_tokens, answer_tokens, relays, strict=True)
        ]
        rewards, scenarios = group_rewards(list(id), outcomes, kind)
        if sink is not None:
            sink([
                {"id": qid, "gold": gold, **asdict(o), "reward": r, "scenario": sc, "text": text}
                for qid, gold, o, r, sc, text in zip(id, answer, outcomes, rewards, scenarios, answer_text, strict=True)
            ])  # fmt: skip
        if log_metric is not None:
            _log_batch(log_metric, outcomes, rewards, scenarios)
        return rewards

    relay_reward.__name__ = f"relay_{kind}"
    return relay_reward


def _log_batch(log_metric, outcomes, rewards, scenarios) -> None:
    n = max(len(outcomes), 1)
    log_metric("relay/accuracy", sum(o.correct for o in outcomes) / n)
    total = sum(o.answer_tokens for o in outcomes) or 1
    log_metric("relay/llm_share", sum(o.llm_tokens for o in outcomes) / total)
    log_metric("relay/relays_per_answer", sum(o.relays for o in outcomes) / n)
    log_metric("relay/called_share", sum(o.called for o in outcomes) / n)
    log_metric("relay/near_misses_per_answer", sum(o.near_misses for o in outcomes) / n)
    log_metric("relay/unserved_per_answer", sum(o.unserved for o in outcomes) / n)
    for name in ("student_solvable", "teacher_dependent", "teacher_unsolvable"):
        picked = [r for r, s in zip(rewards, scenarios, strict=True) if s == name]
        log_metric(f"relay/share_{name}", len(picked) / n)
        if picked:
            log_metric(f"relay/reward_{name}", sum(picked) / len(picked))
