"""Cost record of one answer: edge compute, every relay's network and cloud compute, and money.

Pure data plus arithmetic; the relay driver fills it in. A run sums records with `RunCost`.
Money comes from a `PriceTable` (YAML, `configs/prices.yaml`), so figures can be compared to the
counterfactual of the same answer written by the LLM alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field


class PriceTable(BaseModel):
    """Prices in USD. Defaults are a small hosted-API-like tier; override them in YAML."""

    model_config = ConfigDict(extra="forbid")

    currency: str = "USD"
    llm_input_per_mtok: float = Field(0.10, ge=0)
    """Cloud LLM: price per million prompt tokens that had to be prefilled."""
    llm_cached_input_per_mtok: float = Field(0.025, ge=0)
    """Cloud LLM: price per million prompt tokens served from the session's KV cache."""
    llm_output_per_mtok: float = Field(0.40, ge=0)
    """Cloud LLM: price per million generated tokens."""
    network_per_gb: float = Field(0.09, ge=0)
    """Network transfer (both directions), per 10^9 bytes."""
    edge_per_hour: float = Field(0.0, ge=0)
    """The user's own device: compute time, per hour (electricity; 0 by default)."""

    @classmethod
    def from_yaml(cls, path: str | Path) -> PriceTable:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.model_validate(data)


BUDGET_REACHED = "budget reached"
"""The fallback an answer records when its own money budget stops relaying: a policy limit."""


def cloud_failures(fallbacks: list[str], policy: str) -> list[str]:
    """The fallbacks the cloud caused (not the answer's own budget) in an answer that relays: an
    answer with one measures the outage, not the policy (evaluation retries it, GRPO refuses it)."""
    if policy == "never":
        return []
    return [f for f in fallbacks if f != BUDGET_REACHED]


@dataclass
class RelayCost:
    """One `<call>N</call>` round trip."""

    n_requested: int
    n_granted: int = 0
    tokens_received: int = 0
    finish: str = ""
    round_trip_ms: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    cloud_prompt_tokens: int = 0
    """Tokens the cloud had to prefill for this relay."""
    cloud_cached_tokens: int = 0
    """Tokens of context the cloud reused from the session's KV cache."""
    cloud_decode_tokens: int = 0
    cloud_server_ms: float = 0.0
    resent_full_context: bool = False
    """The session was lost or out of step and the client re-sent the whole context."""
    error: str = ""
    money: float = 0.0
    """This relay's cloud tokens and bytes at the price table (filled by `CostRecord.price`)."""

    def price(self, prices: PriceTable) -> float:
        self.money = (
            self.cloud_prompt_tokens * prices.llm_input_per_mtok / 1e6
            + self.cloud_cached_tokens * prices.llm_cached_input_per_mtok / 1e6
            + self.cloud_decode_tokens * prices.llm_output_per_mtok / 1e6
            + (self.bytes_up + self.bytes_down) * prices.network_per_gb / 1e9
        )
        return self.money


@dataclass
class CostRecord:
    """Everything one answer cost. JSON-serialisable with `to_dict`."""

    prompt_tokens: int = 0
    slm_prefill_ms: float = 0.0
    slm_decode_ms: float = 0.0
    slm_tokens: int = 0
    """Answer tokens the SLM wrote (including command tokens)."""
    llm_tokens: int = 0
    """Answer tokens the LLM wrote."""
    relays: list[RelayCost] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    """Why the SLM had to continue alone (cloud unavailable, budget, ...)."""
    wall_ms: float = 0.0
    finish: str = ""
    """Why the answer ended: eos, llm_eos, max_tokens (the answer-token limit cut it), ..."""
    money: float = 0.0
    money_llm_only: float = 0.0
    """Counterfactual: the same prompt and answer length written by the cloud LLM alone."""

    @property
    def answer_tokens(self) -> int:
        return self.slm_tokens + self.llm_tokens

    @property
    def llm_share(self) -> float:
        """Fraction of answer tokens written by the LLM (the paper's call ratio)."""
        return self.llm_tokens / self.answer_tokens if self.answer_tokens else 0.0

    @property
    def bytes_up(self) -> int:
        return sum(r.bytes_up for r in self.relays)

    @property
    def bytes_down(self) -> int:
        return sum(r.bytes_down for r in self.relays)

    @property
    def cloud_ms(self) -> float:
        return sum(r.cloud_server_ms for r in self.relays)

    @property
    def edge_ms(self) -> float:
        return self.slm_prefill_ms + self.slm_decode_ms

    def price(self, prices: PriceTable) -> None:
        """Fill `money` and `money_llm_only` from a price table."""
        self.money = sum(r.price(prices) for r in self.relays) + self.edge_ms * prices.edge_per_hour / 3.6e6
        self.money_llm_only = llm_only_cost(self.prompt_tokens, self.answer_tokens, prices)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(
            answer_tokens=self.answer_tokens,
            llm_share=self.llm_share,
            bytes_up=self.bytes_up,
            bytes_down=self.bytes_down,
            cloud_ms=self.cloud_ms,
            edge_ms=self.edge_ms,
            n_relays=len(self.relays),
        )
        return out


# A token id travels as a protobuf varint: 3 bytes for ids < 2**21 (Qwen's vocab is 151,936).
WIRE_BYTES_PER_TOKEN = 3
WIRE_OVERHEAD_BYTES = 64


def llm_only_cost(prompt_tokens: int, answer_tokens: int, prices: PriceTable) -> float:
    """Money for one answer written entirely by the cloud LLM (prompt up, answer down)."""
    wire = (prompt_tokens + answer_tokens) * WIRE_BYTES_PER_TOKEN + 2 * WIRE_OVERHEAD_BYTES
    return (
        prompt_tokens * prices.llm_input_per_mtok / 1e6
        + answer_tokens * prices.llm_output_per_mtok / 1e6
        + wire * prices.network_per_gb / 1e9
    )


@dataclass
class RunCost:
    """Sum of many answers' records (a conversation, an evaluation run)."""

    answers: int = 0
    answer_tokens: int = 0
    llm_tokens: int = 0
    relays: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    edge_ms: float = 0.0
    cloud_ms: float = 0.0
    wall_ms: float = 0.0
    money: float = 0.0
    money_llm_only: float = 0.0
    fallbacks: int = 0

    def add(self, record: CostRecord) -> None:
        self.answers += 1
        self.answer_tokens += record.answer_tokens
        self.llm_tokens += record.llm_tokens
        self.relays += len(record.relays)
        self.bytes_up += record.bytes_up
        self.bytes_down += record.bytes_down
        self.edge_ms += record.edge_ms
        self.cloud_ms += record.cloud_ms
        self.wall_ms += record.wall_ms
        self.money += record.money
        self.money_llm_only += record.money_llm_only
        self.fallbacks += len(record.fallbacks)

    @property
    def llm_share(self) -> float:
        return self.llm_tokens / self.answer_tokens if self.answer_tokens else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "llm_share": self.llm_share}
