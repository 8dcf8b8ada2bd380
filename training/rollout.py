"""GRPO rollouts through the serving code: the policy SLM in torch behind the edge's `RelayEngine`.

A rollout is one answer produced by exactly the loop the app serves with (`edge.relay.driver`):
the same `RelayMachine`, the same command detection and cutting, the same splicing. Only the two
ends differ: `TorchSlm` is the policy being trained (batch 1, KV cache), and the LLM is either
`InProcessLink` (the cloud's `TransformersBackend` in this process, session-style: it keeps a KV
cache per rollout and prefills only the new ids) or a real `CloudLink` over gRPC. A cloud that
fails mid-rollout ends the relay and the SLM finishes alone, as in the app.

What TRL needs per completion: the answer's ids (SLM and LLM tokens, plus the EOS when the answer
ended on one), `env_mask` (1 = the policy wrote it; 0 = the LLM's tokens, kept out of the loss
unless `include_llm_tokens`), and the sampling log-probabilities of each token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from common.sampling import sample
from edge.cloud_link import RelayOutcome, Sampling
from edge.events import TokenEvent
from edge.relay.driver import RelayEngine
from edge.relay.settings import RelaySettings


class TorchSlm:
    """`SlmBackend` over a (peft-wrapped) causal LM: batch 1, DynamicCache, no gradients."""

    def __init__(self, model, max_context: int = 4096) -> None:
        self.model = model
        self.max_context = max_context
        self.last_logits: np.ndarray | None = None
        self._cache = None
        self._length = 0

    def prefill(self, ids: list[int]) -> np.ndarray:
        from transformers import DynamicCache

        self._cache, self._length = DynamicCache(), 0
        return self.forward(ids)

    def forward(self, ids: list[int]) -> np.ndarray:
        import torch

        from common.errors import UserError

        if self._length + len(ids) > self.max_context:
            raise UserError(f"context full: {self._length + len(ids)} tokens > {self.max_context}")
        device = self.model.device
        positions = torch.arange(self._length, self._length + len(ids), device=device)
        with torch.no_grad():
            out = self.model(
                input_ids=torch.tensor([ids], device=device),
                past_key_values=self._cache,
                use_cache=True,
                position_ids=positions[None],
                cache_position=positions,
                logits_to_keep=1,
            )
        self._length += len(ids)
        self.last_logits = out.logits[0, -1].float().cpu().numpy()
        return self.last_logits


class InProcessLink:
    """The LLM in this process with `CloudLink`'s relay interface (no gRPC, no bytes)."""

    address = "in-process"

    def __init__(self, backend) -> None:
        self.backend = backend
        self.eos_ids = frozenset(backend.info.eos_ids)
        self.last = RelayOutcome()
        self._cache = None
        self._held: list[int] = []

    def relay(self, context: list[int], n: int, sampling: Sampling) -> Iterator[list[int]]:
        self.last = RelayOutcome()
        started = time.perf_counter()
        if self._cache is None or context[: len(self._held)] != self._held or len(context) == len(self._held):
            self._cache, self._held = self.backend.new_cache(), []
        delta = context[len(self._held) :]
        logits = self.backend.forward(self._cache, delta)
        self.last.prompt_tokens, self.last.cached_tokens = len(delta), len(self._held)
        rng = np.random.default_rng(sampling.seed)
        tokens = self.last.tokens
        self.last.finish = "length"
        for i in range(n):
            tid = sample(logits, rng, sampling.temperature, sampling.top_p)
            tokens.append(tid)
            yield [tid]
            if tid in self.eos_ids:
                self.last.finish = "eos"
                break
            if i + 1 < n:
                logits = self.backend.forward(self._cache, [tid])
        # The cache holds the context and every token but the last one sampled.
        self._held = list(context) + tokens[:-1]
        self.last.completion_tokens = len(tokens)
        self.last.round_trip_ms = self.last.server_ms = (time.perf_counter() - started) * 1e3

    def close(self) -> None:
        self._cache, self._held = None, []


@dataclass
class Rollout:
    prompt_ids: list[int]
    completion_ids: list[int]
    env_mask: list[int]
    logprobs: list[float]
    text: str
    llm_tokens: int
    relays: int
    finish: str
    fallbacks: list[str] = field(default_factory=list)

    @property
    def answer_tokens(self) -> int:
        return len(self.completion_ids)


def run_rollout(
    engine: RelayEngine, messages: list[dict], settings: RelaySettings, *, include_llm_tokens: bool = False
) -> Rollout:
    """One answer through the serving loop, with what TRL needs to train on it."""
    stream = engine.answer(messages, settings)
    slm = engine.slm
    ids: list[int] = []
    mask: list[int] = []
    logps: list[float] = []
    for event in stream:
        if not isinstance(event, TokenEvent):
            continue
        ids.append(event.token_id)
        if event.source == "slm":
            mask.append(1)
            logps.append(_logprob(slm.last_logits, event.token_id, settings.temperature))
        else:
            mask.append(1 if include_llm_tokens else 0)
            logps.append(0.0)
    machine = stream.machine
    reason = machine.finished.reason if machine.finished else "error"
    eos = engine.vocab.eos_ids[0]
    if reason in ("eos", "llm_eos"):  # the answer ended on an EOS: the policy learns to stop
        ids.append(eos)
        mask.append(1 if reason == "eos" or include_llm_tokens else 0)
        logps.append(_logprob(slm.last_logits, eos, settings.temperature) if reason == "eos" else 0.0)
    return Rollout(
        prompt_ids=list(machine.prompt_ids),
        completion_ids=ids,
        env_mask=mask,
        logprobs=logps,
        text=stream.text,
        llm_tokens=stream.record.llm_tokens,
        relays=len(stream.record.relays),
        finish=reason,
        fallbacks=list(stream.record.fallbacks),
    )


def _logprob(logits: np.ndarray | None, token: int, temperature: float) -> float:
    if logits is None:
        return 0.0
    scaled = logits.astype(np.float64) / (temperature if temperature > 0 else 1.0)
    scaled -= scaled.max()
    return float(scaled[token] - np.log(np.exp(scaled).sum()))
