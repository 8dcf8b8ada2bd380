"""Events the relay loop emits while an answer streams.

The relay state machine (`edge.relay.machine`) works on token ids only. Drivers turn its events
into text (with `edge.detok.IncrementalDetokenizer`) and into a cost record (`edge.cost`). The chat
app, the evaluator and the GRPO rollouts all consume this one event vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Source = Literal["slm", "llm"]


@dataclass(frozen=True)
class TokenEvent:
    """One token appended to the answer (the SLM's context)."""

    token_id: int
    source: Source
    text: str = ""
    """Text this token completed (filled in by drivers; may be empty mid UTF-8 character)."""
    in_command: bool = False
    """True for SLM tokens that belong to a `<call>N</call>` command (hidden from the LLM)."""
    confidence: float | None = None
    """SLM tokens: the top-1 probability of the distribution the token was sampled from (the
    SLM's raw logits, before any command mask or call bias). None for the LLM's tokens."""


@dataclass(frozen=True)
class RelayStarted:
    """The SLM handed control to the cloud LLM."""

    index: int
    n_requested: int
    """N as the SLM wrote it (or as the policy chose it)."""
    n_granted: int
    """N after the per-relay cap and the remaining token budget."""
    trigger: Literal["command", "head", "entropy", "random", "cloud-only"]


@dataclass(frozen=True)
class RelayFinished:
    """The cloud LLM's span ended; control returns to the SLM unless `finish == "eos"`."""

    index: int
    tokens_received: int
    finish: Literal["length", "eos", "abort", "error"]
    round_trip_ms: float = 0.0


@dataclass(frozen=True)
class Notice:
    """Something the user should know that did not stop the answer (fallbacks, ignored commands)."""

    kind: Literal[
        "command_n0",
        "command_malformed",
        "command_clamped",
        "command_unserved",
        "budget_exhausted",
        "cloud_unavailable",
        "cloud_error",
    ]
    detail: str = ""


@dataclass(frozen=True)
class AnswerFinished:
    """The answer is complete."""

    reason: Literal["eos", "llm_eos", "max_tokens", "cancelled", "context_full", "error"]
    detail: str = ""


RelayEvent = TokenEvent | RelayStarted | RelayFinished | Notice | AnswerFinished
