"""Where to put `<call>N</call>` in a warm-up example, and how big N is. Pure functions, no models.

Two modes (METHOD.md §3.1 and issue #8):

- *paper*: 0–3 commands at distinct random token boundaries of the SLM's own answer,
  N = d·10^k (d 1–9, k 0–3) clipped to the tokens that remain. The text after a command is still
  the SLM's: this teaches the syntax, not when to call.
- *divergence*: positions where the LLM, teacher-forced on the SLM's answer, strongly disagrees
  with the SLM's token (it gives that token little probability and prefers another one
  confidently). The LLM's greedy continuation is spliced after the command, and N is where the
  SLM, teacher-forced on that continuation, starts agreeing with it again.

An example is a list of `Segment`s (slm / command / llm text) so that the SFT can keep the LLM's
tokens out of the loss and the datasheet can count what came from where.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

Source = Literal["slm", "command", "llm"]


@dataclass(frozen=True)
class Segment:
    source: Source
    text: str


def command_text(n: int) -> str:
    return f"<call>{n}</call>"


def paper_n(rng: random.Random, remaining: int) -> int:
    """N = d·10^k with d in 1..9 and k in 0..3, clipped to what remains (at least 1)."""
    n = rng.randint(1, 9) * 10 ** rng.randint(0, 3)
    return max(1, min(n, remaining))


def random_insertions(length: int, rng: random.Random, max_commands: int = 3) -> list[tuple[int, int]]:
    """(token boundary, N) pairs for paper mode: 0..max_commands distinct boundaries in 0..length."""
    count = min(rng.randint(0, max_commands), length + 1)
    positions = sorted(rng.sample(range(length + 1), count))
    return [(pos, paper_n(rng, length - pos)) for pos in positions]


def paper_segments(
    answer_ids: Sequence[int], insertions: Sequence[tuple[int, int]], decode: Callable[[list[int]], str]
) -> list[Segment]:
    """The SLM's answer with a command before each chosen token boundary; the answer text is kept."""
    segments: list[Segment] = []
    start = 0
    for pos, n in insertions:
        if pos > start:
            segments.append(Segment("slm", decode(list(answer_ids[start:pos]))))
        segments.append(Segment("command", command_text(n)))
        start = pos
    if start < len(answer_ids):
        segments.append(Segment("slm", decode(list(answer_ids[start:]))))
    return segments


@dataclass(frozen=True)
class TokenScore:
    """The LLM's view of one SLM token under teacher forcing."""

    p_slm_token: float
    """LLM probability of the token the SLM wrote."""
    llm_top_id: int
    llm_top_p: float


MATH_CHARS = frozenset("0123456789=+-*/^%<>\\×÷√π")


def is_math_token(token: bytes) -> bool:
    """A token that carries a number or an operator: where arithmetic goes right or wrong."""
    return any(ch in MATH_CHARS for ch in token.decode("utf-8", "ignore"))


def divergence_points(
    slm_ids: Sequence[int],
    scores: Sequence[TokenScore],
    *,
    max_p_slm: float = 0.1,
    min_p_llm: float = 0.5,
    skip_first: int = 8,
    content: Callable[[int], bool] | None = None,
) -> list[int]:
    """Token positions where the LLM strongly disagrees with the SLM, strongest first.

    Strong disagreement: the LLM gives the SLM's token at most `max_p_slm` and its own choice at
    least `min_p_llm`. The first `skip_first` tokens (the opening phrase) are never chosen. With
    `content`, only positions where the SLM's token or the LLM's choice passes it count (the two
    models disagree on wording all the time; what is worth a call is a number or a step).
    """
    found = []
    for pos, (tid, s) in enumerate(zip(slm_ids, scores, strict=True)):
        strong = s.llm_top_id != tid and s.p_slm_token <= max_p_slm and s.llm_top_p >= min_p_llm
        if pos >= skip_first and strong and (content is None or content(tid) or content(s.llm_top_id)):
            found.append((s.p_slm_token - s.llm_top_p, pos))
    return [pos for _, pos in sorted(found)]


def agreement_n(llm_span: Sequence[int], slm_predictions: Sequence[int], *, min_n: int = 4, run: int = 4) -> int:
    """How many of the LLM's tokens to take: the first n >= min_n from which the SLM's greedy
    predictions match the LLM's next `run` tokens (the SLM can take over). All of them if never."""
    limit = len(llm_span)
    for n in range(min(min_n, limit), limit - run + 1):
        if all(slm_predictions[i] == llm_span[i] for i in range(n, n + run)):
            return max(n, 1)
    return max(limit, 1)


def round_up_n(n: int) -> int:
    """Round N up to one significant digit (d·10^k), the form paper mode uses, so the SLM learns a
    small set of N values: 7 -> 7, 13 -> 20, 47 -> 50, 120 -> 200."""
    if n <= 9:
        return max(n, 1)
    scale = 10 ** int(math.log10(n))
    return math.ceil(n / scale) * scale


def divergence_segments(prefix: str, n: int, llm_text: str, continuation: str) -> list[Segment]:
    """SLM prefix, the command, the LLM's span, then the SLM carrying on."""
    segments = [Segment("slm", prefix)] if prefix else []
    segments += [Segment("command", command_text(n)), Segment("llm", llm_text)]
    if continuation:
        segments.append(Segment("slm", continuation))
    return segments


def segments_text(segments: Sequence[Segment]) -> str:
    return "".join(s.text for s in segments)
