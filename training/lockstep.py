"""G relay answers through one batched policy forward: the group of a GRPO question in lockstep.

On a CPU, batch-1 decoding of a 0.5B model is bound by reading the weights; a batch of 8 reads
them once for 8 tokens (TRAINING.md measured ~4x the tokens per second). The relay machine and
the driver are per answer, so each answer runs in its own thread with the app's own code, and its
SLM is a `LockstepSlot`: `forward()` hands the ids to the `LockstepBatcher` and waits. The batcher
runs one model call as soon as every answer is either waiting for its forward, relaying to the LLM
(`SlotLink` marks that, so a slow relay does not hold the others back) or finished.

One batched KV cache holds every answer. Feeds of different lengths in one call (one answer
appends a 16-token LLM span while the others decode one token) are right-padded; padded positions
are masked out of attention for good, and each answer keeps its own position ids, so what an
answer sees is exactly its own token sequence.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np

from edge.cloud_link import Sampling


class LockstepBatcher:
    def __init__(self, model, slots: int, pad_id: int, max_context: int = 4096) -> None:
        self.model = model
        self.slots = slots
        self.pad_id = pad_id
        self.max_context = max_context
        self._cond = threading.Condition()
        self._state = ["run"] * slots  # run | wait | relay | done
        self._requests: dict[int, list[int]] = {}
        self._results: dict[int, np.ndarray] = {}
        self._cache = None
        self._valid: list[list[int]] = [[] for _ in range(slots)]  # attention mask over cache columns
        self._lengths = [0] * slots  # real tokens each answer holds (its next position id)
        self._error: BaseException | None = None
        self.batches = 0
        """Model calls made, for tests and logs."""

    def slot(self, index: int) -> LockstepSlot:
        return LockstepSlot(self, index)

    def set_state(self, index: int, state: str) -> None:
        with self._cond:
            self._state[index] = state
            self._cond.notify_all()

    def length(self, index: int) -> int:
        return self._lengths[index]

    def forward(self, index: int, ids: list[int]) -> np.ndarray:
        with self._cond:
            self._requests[index] = list(ids)
            self._state[index] = "wait"
            self._cond.notify_all()
            while index not in self._results:
                if self._error is not None:
                    raise RuntimeError("a batched policy forward failed") from self._error
                if self._requests and all(s != "run" for s in self._state):
                    self._run_batch()
                else:
                    self._cond.wait()
            self._state[index] = "run"
            return self._results.pop(index)

    def _run_batch(self) -> None:
        """One model call for every waiting answer (called with the lock held)."""
        import torch
        from transformers import DynamicCache

        requests, self._requests = self._requests, {}
        width = max(len(v) for v in requests.values())
        ids = torch.full((self.slots, width), self.pad_id, dtype=torch.long)
        new_valid = torch.zeros((self.slots, width), dtype=torch.long)
        positions = torch.zeros((self.slots, width), dtype=torch.long)
        for i in range(self.slots):
            positions[i] = torch.arange(self._lengths[i], self._lengths[i] + width)
        for i, feed in requests.items():
            ids[i, : len(feed)] = torch.tensor(feed)
            new_valid[i, : len(feed)] = 1
        past = torch.tensor(self._valid, dtype=torch.long).reshape(self.slots, -1)
        keep = sorted({len(feed) - 1 for feed in requests.values()})
        if self._cache is None:
            self._cache = DynamicCache()
        try:
            with torch.no_grad():
                out = self.model(
                    input_ids=ids.to(self.model.device),
                    attention_mask=torch.cat([past, new_valid], dim=1).to(self.model.device),
                    position_ids=positions.to(self.model.device),
                    past_key_values=self._cache,
                    use_cache=True,
                    logits_to_keep=torch.tensor(keep, device=self.model.device),
                )
        except BaseException as exc:
            self._error = exc
            self._cond.notify_all()
            raise
        logits = out.logits.float().cpu().numpy()
        for i in range(self.slots):
            self._valid[i] += new_valid[i].tolist()
        for i, feed in requests.items():
            self._lengths[i] += len(feed)
            self._results[i] = logits[i, keep.index(len(feed) - 1)]
        self.batches += 1
        self._cond.notify_all()


class LockstepSlot:
    """`SlmBackend` for one answer of the group (see the module docstring)."""

    def __init__(self, batcher: LockstepBatcher, index: int) -> None:
        self.batcher = batcher
        self.index = index
        self.max_context = batcher.max_context
        self.last_logits: np.ndarray | None = None

    def prefill(self, ids: list[int]) -> np.ndarray:
        if self.batcher.length(self.index):
            raise RuntimeError("a lockstep slot is prefilled once, at the start of its answer")
        return self.forward(ids)

    def forward(self, ids: list[int]) -> np.ndarray:
        from common.errors import UserError

        if self.batcher.length(self.index) + len(ids) > self.max_context:
            raise UserError(f"context full: {self.batcher.length(self.index) + len(ids)} > {self.max_context}")
        self.last_logits = self.batcher.forward(self.index, ids)
        return self.last_logits


class SlotLink:
    """Wraps an answer's LLM link: while it relays, the batch does not wait for this answer."""

    def __init__(self, inner, batcher: LockstepBatcher, index: int) -> None:
        self.inner, self.batcher, self.index = inner, batcher, index
        self.address = inner.address

    @property
    def last(self):
        return self.inner.last

    def relay(self, context: list[int], n: int, sampling: Sampling) -> Iterator[list[int]]:
        self.batcher.set_state(self.index, "relay")
        try:
            yield from self.inner.relay(context, n, sampling)
        finally:
            self.batcher.set_state(self.index, "run")

    def close(self) -> None:
        self.inner.close()


def run_lockstep(jobs: list[Callable], batcher: LockstepBatcher) -> list:
    """Run `jobs[i](slot_i_backend_wrapper_index)` in threads; each job must use slot i."""
    results: list = [None] * len(jobs)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = jobs[i](i)
        except BaseException as exc:  # surfaced below, after every thread has stopped
            errors.append(exc)
        finally:
            batcher.set_state(i, "done")

    threads = [threading.Thread(target=work, args=(i,), name=f"rollout-{i}") for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
