"""Per-answer relay settings: which controller decides when to call the cloud, and the limits.

These can change between answers (the chat app exposes them at run time), so they live apart from
the process config. Validated with pydantic so bad values from YAML, flags or the UI fail clearly.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Policy = Literal["learned", "head", "entropy", "random", "never", "cloud-only"]
POLICIES: tuple[Policy, ...] = ("learned", "head", "entropy", "random", "never", "cloud-only")


class RelaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Policy = "learned"
    """learned: the SLM's own `<call>N</call>` commands (RelayLLM). head: call with `fixed_n` when the
    call head (a decision learned beside the frozen SLM, edge/relay/call_head.py) gives at least
    `head_tau`. entropy: call with `fixed_n` when
    the SLM's top-1 probability is below `entropy_tau`. random: call with `fixed_n` at each token
    with probability `random_rate`. never: SLM alone (its commands are not served). cloud-only: LLM
    alone."""
    call_bias: float = Field(0.0, ge=-20, le=20)
    """learned: logit offset added to the tokens that open `<call>` (0 = the SLM as trained). The
    SLM's own call propensity stays the decision; the bias moves its threshold, so one trained SLM
    gives a curve of LLM share against accuracy (more calls when > 0, fewer when < 0)."""
    max_relays: int = Field(4, ge=0)
    """Relays allowed per answer (the paper's eval allows 5 turns, i.e. 4 calls)."""
    unserved_commands: int = Field(4, ge=0)
    """Commands the SLM may write that cannot be served (policy `never`, relay limit reached, cloud
    down): each stays in its text as a no-op, like N = 0, and is cut from the LLM's view; after
    this many, the mask forbids more. 0 masks at once. Masking at once made the trained SLM write
    look-alikes instead (`= 14< call>4</call>4`), in the middle of its numbers."""
    max_new_tokens: int = Field(1024, ge=1)
    """Answer tokens (SLM + LLM together) before the answer is cut."""
    max_n: int = Field(512, ge=1)
    """Cap on N per relay; larger requests are clamped."""
    entropy_tau: float = Field(0.35, gt=0, lt=1)
    """entropy policy: call when the SLM's top-1 probability falls below this."""
    head_tau: float = Field(0.5, gt=0, lt=1)
    """head policy: call when the call head's probability that the LLM would strongly disagree with
    the SLM's next token reaches this."""
    fixed_n: int = Field(16, ge=1)
    """N used by the head, entropy and random policies."""
    random_rate: float = Field(0.01, ge=0, le=1)
    """random policy: per-token probability of calling."""
    budget_usd: float | None = Field(None, ge=0)
    """Stop relaying in an answer once its cloud cost would pass this (None: no budget)."""
    temperature: float = Field(0.0, ge=0)
    """0 means greedy decoding (both SLM and LLM)."""
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0
