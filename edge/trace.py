"""Why an answer called the cloud where it did: the SLM's confidence along the answer and each relay.

Built from the relay events alone (pure, no UI), so the chat app's "why" strip, the markdown
export and `relay ask --json` show the same data:

- per answer token, who wrote it and, for the SLM's tokens, its top-1 probability (the confidence
  of the distribution it was sampled from; the entropy controller calls below a threshold of it);
- per relay, the token position where it fired, its trigger (the SLM's own command, entropy,
  random, cloud-only), N requested and granted, tokens received, round trip and finish; the cost
  record adds bytes, the cloud's prefill / cached / decode tokens and money (`with_costs`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edge.cost import RelayCost
from edge.events import RelayEvent, RelayFinished, RelayStarted, TokenEvent

SPARK_LEVELS = "▁▂▃▄▅▆▇█"


@dataclass
class RelayMark:
    index: int
    at_token: int
    """Answer tokens written before the relay fired."""
    trigger: str
    n_requested: int
    n_granted: int
    tokens_received: int = 0
    round_trip_ms: float = 0.0
    finish: str = ""
    cost: dict[str, Any] = field(default_factory=dict)
    """The relay's `RelayCost` (bytes, cloud prefill / cached / decode tokens, money) once known."""


@dataclass
class AnswerTrace:
    sources: list[str] = field(default_factory=list)
    """"slm" or "llm" per answer token."""
    confidence: list[float | None] = field(default_factory=list)
    """The SLM's top-1 probability per answer token (None for the LLM's tokens)."""
    relays: list[RelayMark] = field(default_factory=list)

    def feed(self, event: RelayEvent) -> None:
        if isinstance(event, TokenEvent):
            self.sources.append(event.source)
            self.confidence.append(event.confidence if event.source == "slm" else None)
        elif isinstance(event, RelayStarted):
            self.relays.append(
                RelayMark(event.index, len(self.sources), event.trigger, event.n_requested, event.n_granted)
            )
        elif isinstance(event, RelayFinished):
            for mark in reversed(self.relays):
                if mark.index == event.index:
                    mark.tokens_received, mark.round_trip_ms, mark.finish = (
                        event.tokens_received,
                        event.round_trip_ms,
                        event.finish,
                    )
                    break

    def with_costs(self, relays: list[RelayCost]) -> AnswerTrace:
        """Attach each relay's cost (the record lists relays in the order they fired)."""
        for mark, cost in zip(self.relays, relays, strict=False):
            mark.cost = asdict(cost)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": "".join("L" if s == "llm" else "S" for s in self.sources),
            "confidence": [None if c is None else round(c, 4) for c in self.confidence],
            "relays": [asdict(r) for r in self.relays],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnswerTrace:
        sources = ["llm" if ch == "L" else "slm" for ch in data.get("sources", "")]
        marks = [RelayMark(**r) for r in data.get("relays", [])]
        return cls(sources, list(data.get("confidence", [])), marks)

    def lowest(self) -> tuple[int, float] | None:
        """(token index, confidence) of the SLM's least confident token."""
        known = [(i, c) for i, c in enumerate(self.confidence) if c is not None]
        return min(known, key=lambda x: x[1]) if known else None


@dataclass(frozen=True)
class SparkCell:
    char: str
    source: str
    """"llm" if the cloud wrote any token of the cell, else "slm"."""
    relay: int | None
    """The relay that fired inside this cell, if any (its index)."""


def sparkline(trace: AnswerTrace, width: int) -> list[SparkCell]:
    """The answer in `width` cells (or fewer): each cell is the lowest SLM confidence of its tokens,
    drawn as a block from ▁ (unsure) to █ (sure); cells the LLM wrote entirely are ▔."""  # noqa: RUF002
    n = len(trace.sources)
    if n == 0 or width <= 0:
        return []
    cells = min(width, n)
    fired = {mark.at_token: mark.index for mark in trace.relays}
    out: list[SparkCell] = []
    for k in range(cells):
        lo, hi = k * n // cells, (k + 1) * n // cells
        slm = [c for c in trace.confidence[lo:hi] if c is not None]
        llm = any(s == "llm" for s in trace.sources[lo:hi])
        relay = next((fired[i] for i in range(lo, hi + (k == cells - 1)) if i in fired), None)
        if slm:
            level = min(len(SPARK_LEVELS) - 1, int(min(slm) * len(SPARK_LEVELS)))
            char = SPARK_LEVELS[level]
        else:
            char = "▔" if llm else "·"  # the cloud wrote it; or an SLM token without a confidence
        out.append(SparkCell(char, "llm" if llm else "slm", relay))
    return out
