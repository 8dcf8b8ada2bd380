"""Warm-up insertion invariants: commands parse, the text outside them is preserved, N has the
paper's form; divergence points and the agreement length."""

from __future__ import annotations

import random
import re

import pytest

from edge.relay.commands import COMMAND_RE, CommandScanner
from tests.fakes import byte_vocab, encode
from training.insertion import (
    TokenScore,
    agreement_n,
    divergence_points,
    divergence_segments,
    paper_n,
    paper_segments,
    random_insertions,
    round_up_n,
    segments_text,
)

TOKENS = byte_vocab()


def decode(ids: list[int]) -> str:
    return b"".join(TOKENS[i] for i in ids).decode("utf-8", "replace")


def test_paper_n_has_the_form_d_times_ten_to_k_and_is_clipped() -> None:
    rng = random.Random(0)
    for _ in range(500):
        n = paper_n(rng, remaining=10_000)
        assert re.fullmatch(r"[1-9]0{0,3}", str(n)), n
    assert all(1 <= paper_n(rng, remaining=5) <= 5 for _ in range(200))
    assert paper_n(rng, remaining=0) == 1


@pytest.mark.parametrize("seed", range(30))
def test_paper_insertions_parse_and_preserve_the_answer(seed: int) -> None:
    answer = encode("So 3 * 4 = 12 apples, and 12 - 2 = 10. The answer is \\boxed{10}.")
    rng = random.Random(seed)
    inserts = random_insertions(len(answer), rng)
    assert 0 <= len(inserts) <= 3
    assert len({p for p, _ in inserts}) == len(inserts)
    text = segments_text(paper_segments(answer, inserts, decode))
    found = [m for m in COMMAND_RE.finditer(text.encode())]
    assert len(found) == len(inserts)
    assert COMMAND_RE.sub(b"", text.encode()).decode() == decode(answer)
    # The relay machine's own scanner finds every command too.
    scanner = CommandScanner()
    commands = [c for c in (scanner.push(ch.encode()) for ch in text) if c is not None]
    assert [c.n for c in commands] == [n for _, n in inserts]


def score(p_slm: float, top: int, top_p: float) -> TokenScore:
    return TokenScore(p_slm, top, top_p)


def test_divergence_points_need_strong_disagreement() -> None:
    slm = [1, 2, 3, 4, 5]
    scores = [
        score(0.01, 9, 0.9),  # strong, but inside skip_first
        score(0.5, 9, 0.4),  # mild: the LLM still likes the SLM's token
        score(0.05, 9, 0.8),  # strong
        score(0.02, 9, 0.95),  # strongest
        score(0.9, 5, 0.9),  # agreement (top == slm token)
    ]
    assert divergence_points(slm, scores, skip_first=1) == [3, 2]


def test_agreement_n_is_where_the_slm_takes_over() -> None:
    span = [10, 11, 12, 13, 14, 15, 16, 17]
    preds = [0, 0, 0, 13, 14, 15, 16, 0]
    assert agreement_n(span, preds, min_n=1, run=4) == 3
    assert agreement_n(span, [0] * 8, min_n=1, run=4) == 8  # never agrees: take the whole span
    assert agreement_n(span, span, min_n=4, run=2) == 4  # at least min_n


def test_round_up_n() -> None:
    assert [round_up_n(n) for n in (0, 1, 7, 10, 13, 47, 50, 120, 999)] == [1, 1, 7, 10, 20, 50, 50, 200, 1000]


def test_divergence_segments_order() -> None:
    segs = divergence_segments("So ", 20, "3*4=12", " then 10")
    assert [s.source for s in segs] == ["slm", "command", "llm", "slm"]
    assert segments_text(segs) == "So <call>20</call>3*4=12 then 10"


def test_content_filter_keeps_disagreements_on_numbers() -> None:
    from training.insertion import is_math_token

    assert is_math_token(b" 14") and is_math_token(b"=") and not is_math_token(b" steps")
    slm = list(b"ab7d")
    scores = [
        score(0.01, ord("x"), 0.9),
        score(0.01, ord("y"), 0.9),
        score(0.01, ord("2"), 0.9),
        score(0.01, ord("z"), 0.9),
    ]
    math = lambda tid: is_math_token(bytes([tid]))  # noqa: E731
    assert divergence_points(slm, scores, skip_first=0, content=math) == [2]
    assert sorted(divergence_points(slm, scores, skip_first=0)) == [0, 1, 2, 3]
