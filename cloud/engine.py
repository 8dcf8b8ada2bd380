"""The seam between the relay service and whatever runs the LLM: "generate up to N tokens after this
context, streaming, with usage".

The servicer (`cloud.servicer`) owns sessions, auth, validation, limits and the proto; it keeps
each session's token ids and hands an engine the whole context on every relay. An engine decides
what to reuse:

- `StepEngine` (the embedded default) keeps a KV cache per session in its `state` and prefills only
  what is new, one model step at a time through an `LlmBackend` (`cloud.backend`, transformers);
- `cloud.vllm_engine.VllmEngine` sends each relay to vLLM as one request with the context's token
  ids; vLLM's automatic prefix caching makes the shared prefix cheap and reports how much it reused.

Either way the edge cannot tell them apart. This module never imports grpc or torch.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cloud.backend import BackendInfo, LlmBackend
from common.sampling import log_probability, sample


@dataclass(frozen=True)
class GenerateParams:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    """0: off."""
    seed: int | None = None
    stop_ids: frozenset[int] = frozenset()
    """Stop after any of these (the model's eos ids are added by the engine)."""
    logprobs: bool = False


@dataclass(frozen=True)
class TokenOut:
    token_id: int
    logprob: float | None = None


@dataclass(frozen=True)
class GenerateDone:
    finish: Literal["eos", "length"]
    prompt_tokens: int
    """Context tokens the engine had to prefill for this relay."""
    cached_tokens: int
    """Context tokens it reused (a session's KV cache, or vLLM's prefix cache)."""
    completion_tokens: int
    prefill_ms: float


Generated = TokenOut | GenerateDone


class Engine(ABC):
    """Runs the LLM for the relay service."""

    name: str
    info: BackendInfo

    def new_state(self) -> Any:
        """Per-session engine state (a KV cache, or nothing)."""
        return None

    def state_nbytes(self, state: Any) -> int:
        """Memory the session's state holds, for the server's KV budget (0: the engine manages it)."""
        return 0

    def kv_bytes_per_token(self) -> int:
        """KV memory per context token reserved ahead of a relay (0: nothing is reserved)."""
        return 0

    @abstractmethod
    def generate(self, state: Any, context: list[int], params: GenerateParams) -> AsyncIterator[Generated]:
        """Stream up to `params.max_new_tokens` tokens after `context`, then one GenerateDone.
        Closing the iterator early (cancel, deadline) stops the generation; `state` may then be
        stale and the servicer drops the session."""

    def dead(self) -> str | None:
        """Why this engine can never generate again (its workers died), or None while it can.
        The server then reports NOT_SERVING and exits, so a supervisor restarts it."""
        return None

    async def start(self) -> None:  # noqa: B027  (optional hook: most engines need nothing)
        """Called once on the server's event loop before serving."""

    def shutdown(self) -> None:  # noqa: B027
        """Release workers and memory."""


@dataclass
class StepState:
    """A session in the step engine: the KV cache holds `context[:kv_len]`."""

    cache: Any
    kv_len: int = 0
    last_logits: np.ndarray | None = None
    """Logits after the last fed token: a relay with nothing new to feed (the previous one produced
    no token) starts from them, since a model step over zero tokens is not a thing."""


class StepEngine(Engine):
    """Generation one model step at a time over an `LlmBackend`, with a KV cache per session.

    Model steps run one at a time in a dedicated thread (torch parallelises inside each step), one
    token per executor call, so concurrent sessions interleave and the event loop never blocks.
    """

    name = "transformers"

    def __init__(self, backend: LlmBackend) -> None:
        self.backend = backend
        self.info = backend.info
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm")

    def new_state(self) -> StepState:
        return StepState(self.backend.new_cache())

    def state_nbytes(self, state: StepState) -> int:
        return self.backend.cache_nbytes(state.cache)

    def kv_bytes_per_token(self) -> int:
        return self.backend.kv_bytes_per_token()

    async def _step(self, state: StepState, ids: list[int]) -> np.ndarray:
        if not ids and state.last_logits is not None:
            return state.last_logits
        loop = asyncio.get_running_loop()
        logits = await loop.run_in_executor(self._executor, self.backend.forward, state.cache, ids)
        state.kv_len += len(ids)
        state.last_logits = logits
        return logits

    async def generate(self, state: StepState, context: list[int], params: GenerateParams) -> AsyncIterator[Generated]:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        rng = np.random.default_rng(params.seed)
        stops = set(self.info.eos_ids) | set(params.stop_ids)
        cached, feed = state.kv_len, context[state.kv_len :]
        logits = await self._step(state, feed)
        prefill_ms = (time.perf_counter() - started) * 1e3
        finish: Literal["eos", "length"] = "length"
        produced = 0
        while produced < params.max_new_tokens:
            token = await loop.run_in_executor(  # off the event loop: a full-vocabulary softmax
                self._executor, sample, logits, rng, params.temperature, params.top_p, params.top_k
            )
            produced += 1
            yield TokenOut(token, log_probability(logits, token) if params.logprobs else None)
            if token in stops:
                finish = "eos"
                break
            if produced < params.max_new_tokens:
                logits = await self._step(state, [token])
        yield GenerateDone(finish, len(feed), cached, produced, prefill_ms)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def as_engine(backend_or_engine: LlmBackend | Engine) -> Engine:
    """Servers take an engine; a bare step backend (tests, the embedded default) gets a StepEngine."""
    return backend_or_engine if isinstance(backend_or_engine, Engine) else StepEngine(backend_or_engine)
