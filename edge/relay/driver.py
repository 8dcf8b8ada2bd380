"""Runs the relay state machine against a real SLM and a real cloud link, and keeps the books.

`RelayEngine.answer()` returns an `AnswerStream`: a blocking iterator of events (run it in a
thread from async code) that also builds the answer's text, its provenance spans and its cost
record. The chat app, the `relay ask` command and the evaluator all use it; GRPO rollouts use the
same `RelayMachine` with a torch SLM behind the same `SlmBackend` protocol.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np

from common.errors import UserError
from edge.cloud_link import CloudError, CloudLink, Sampling
from edge.cost import BUDGET_REACHED, CostRecord, PriceTable, RelayCost
from edge.detok import IncrementalDetokenizer
from edge.events import AnswerFinished, RelayEvent, RelayStarted, TokenEvent
from edge.relay.call_head import CallHead
from edge.relay.commands import CommandMask
from edge.relay.machine import CallCloud, Decode, Finish, RelayMachine, Step, TokenizerView
from edge.relay.settings import RelaySettings
from edge.vocab import Vocab


class SlmBackend(Protocol):
    max_context: int

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Make the cache hold exactly `ids` (reusing any prefix it holds); logits of the next token."""

    def forward(self, ids: list[int]) -> np.ndarray:
        """Append `ids` to the cache; logits of the next token."""


@runtime_checkable
class AnswerStreamLike(Protocol):
    """What an answer is to its consumers: an iterator of events with the record and text."""

    record: CostRecord
    text: str

    def __iter__(self) -> Iterator[RelayEvent]: ...


@runtime_checkable
class ChatEngine(Protocol):
    """What the chat app and `relay ask` use of an engine: `RelayEngine` implements it, and so does
    the UI tests' scripted engine (checked in the tests), so the two cannot drift apart."""

    cloud_state: str
    cloud_address: str | None
    max_context: int

    def count_tokens(self, messages: list[dict]) -> int: ...

    def answer(
        self, messages: list[dict], settings: RelaySettings, cancel: threading.Event | None = None
    ) -> AnswerStreamLike: ...


class Backoff:
    """Capped exponential backoff for a cloud that failed transiently: 1, 2, 4 ... 60 s."""

    def __init__(self, first_s: float = 1.0, cap_s: float = 60.0, clock=time.monotonic) -> None:
        self.first_s, self.cap_s, self.clock = first_s, cap_s, clock
        self.failures = 0
        self.retry_at = 0.0

    def failed(self) -> float:
        delay = min(self.cap_s, self.first_s * 2**self.failures)
        self.failures += 1
        self.retry_at = self.clock() + delay
        return delay

    def succeeded(self) -> None:
        self.failures, self.retry_at = 0, 0.0

    def ready(self) -> bool:
        return self.clock() >= self.retry_at


class RelayEngine:
    def __init__(
        self,
        slm: SlmBackend,
        vocab: Vocab,
        link: CloudLink | None,
        prices: PriceTable | None = None,
        *,
        cloud_state: str = "connected",
        call_head: CallHead | None = None,
    ) -> None:
        self.slm = slm
        self.call_head = call_head
        """The `head` policy's decision (None: that policy is unavailable)."""
        self.vocab = vocab
        self.link = link
        self.prices = prices or PriceTable()
        self.cloud_state = cloud_state if link is not None else "offline"
        """connected | embedded | reconnecting (a transient failure; retried after a backoff) | offline"""
        # A link made while the cloud was unreachable starts "reconnecting"; success makes it connected.
        self._connected_state = "connected" if self.cloud_state == "reconnecting" else self.cloud_state
        self.cloud_address = link.address if link is not None else None
        self.cloud_note = ""
        """Why the cloud is offline or reconnecting, when it is."""
        self.backoff = Backoff()
        self.view = TokenizerView(
            token_bytes=vocab.token_bytes,
            eos_ids=frozenset(vocab.eos_ids),
            encode=vocab.encode,
            mask=CommandMask(vocab.token_bytes),
        )
        self._lock = threading.Lock()  # one answer at a time per SLM session
        self._reconnecting = threading.Lock()

    @property
    def max_context(self) -> int:
        return self.slm.max_context

    def count_tokens(self, messages: list[dict]) -> int:
        return len(self.vocab.encode_chat(messages))

    @property
    def cloud_usable(self) -> bool:
        """Connected, or reconnecting and its backoff has run out (this answer retries)."""
        if self.link is None or self.cloud_state == "offline":
            return False
        return self.cloud_state != "reconnecting" or self.backoff.ready()

    def cloud_failed(self, error: CloudError) -> None:
        """A transient error: retry after a backoff; a permanent one: offline for good."""
        self.cloud_note = str(error)
        if error.transient:
            delay = self.backoff.failed()
            self.cloud_state = "reconnecting"
            self.cloud_note = f"{error} (retry in {delay:.0f} s)"
        else:
            self.cloud_state = "offline"

    def cloud_succeeded(self) -> None:
        if self.cloud_state == "reconnecting":
            self.cloud_state = self._connected_state
            self.cloud_note = ""
        self.backoff.succeeded()

    def check_cloud(self) -> None:
        """Reconnecting and the backoff has run out: probe the cloud on a fresh channel (model
        info and tokenizer checked again: a restarted cloud may serve another model). This also
        connects a cloud that was down when the edge started (compose does not always wait)."""
        reconnect = getattr(self.link, "reconnect", None)
        if reconnect is None or self.cloud_state != "reconnecting" or not self.backoff.ready():
            return
        if self._lock.locked() or not self._reconnecting.acquire(blocking=False):
            return  # an answer holds the link, or another thread is probing right now
        try:
            reconnect()
        except CloudError as exc:
            self.cloud_failed(exc)
        else:
            self.cloud_succeeded()
        finally:
            self._reconnecting.release()

    def answer(
        self, messages: list[dict], settings: RelaySettings, cancel: threading.Event | None = None
    ) -> AnswerStream:
        prompt = self.vocab.encode_chat(messages)
        if len(prompt) + 1 >= self.slm.max_context:
            raise UserError(f"prompt of {len(prompt)} tokens does not fit the context ({self.slm.max_context})")
        if settings.policy == "head" and self.call_head is None:
            raise UserError(
                "policy head: no call head for this SLM (set models.call_head to a `relay train head` file)"
            )
        if settings.policy != "never":
            self.check_cloud()
        return AnswerStream(self, prompt, settings, cancel or threading.Event())


class AnswerStream:
    def __init__(self, engine: RelayEngine, prompt: list[int], settings: RelaySettings, cancel: threading.Event):
        self.engine = engine
        self.settings = settings
        self.cancel = cancel
        self.machine = RelayMachine(
            prompt,
            engine.view,
            settings,
            cloud_available=engine.cloud_usable,
            cloud_max_n=getattr(engine.link, "max_n", None),
            cloud_max_context=getattr(engine.link, "max_context", None),
            call_head=engine.call_head.probability if engine.call_head is not None else None,
        )
        self.record = CostRecord(prompt_tokens=len(prompt))
        if not self.machine.cloud_usable and settings.policy != "never":
            state = "reconnecting" if engine.cloud_state == "reconnecting" else "offline"
            self.record.fallbacks.append(f"cloud {state}: {engine.cloud_note or 'not configured'}")
        self.spans: list[tuple[str, str]] = []
        self._detok = IncrementalDetokenizer(engine.vocab.token_bytes, engine.vocab.special_ids)
        self._prefilled = False

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.spans)

    def __iter__(self) -> Iterator[RelayEvent]:
        started = time.perf_counter()
        with self.engine._lock:
            events, action = self.machine.start()
            try:
                while True:
                    yield from self._emit(events)
                    if isinstance(action, Finish):
                        break
                    if self.cancel.is_set():
                        events, action = self.machine.cancel()
                    elif isinstance(action, Decode):
                        events, action = self._decode(action)
                    else:
                        events, action = yield from self._call_cloud(action)
            finally:
                self._close(started)

    # -- steps ----------------------------------------------------------------------------------

    def _decode(self, action: Decode) -> Step:
        t0 = time.perf_counter()
        slm = self.engine.slm
        try:
            # The first feed is the whole prompt (or, after a failed cloud-only start, prompt plus
            # the LLM's tokens): prefill reuses what the cache holds from the previous turn.
            logits = slm.forward(action.feed) if self._prefilled else slm.prefill(action.feed)
        except UserError as exc:  # context full mid-answer
            return self.machine.stop("context_full", str(exc))
        elapsed = (time.perf_counter() - t0) * 1e3
        if not self._prefilled or len(action.feed) > 1:
            self.record.slm_prefill_ms += elapsed
            self._prefilled = True
        else:
            self.record.slm_decode_ms += elapsed
        return self.machine.on_logits(logits)

    def _call_cloud(self, action: CallCloud) -> Iterator[RelayEvent]:
        link = self.engine.link
        assert link is not None
        relay = self.record.relays[-1]
        s = self.settings
        sampling = Sampling(s.temperature, s.top_p, s.seed + len(self.record.relays))
        tokens = link.relay(action.context, action.n, sampling)
        relaying = threading.Event()
        relaying.set()
        threading.Thread(target=self._cancel_watch, args=(link, relaying), daemon=True).start()
        try:
            for ids in tokens:
                yield from self._emit(self.machine.on_llm_tokens(ids))
                if self.cancel.is_set():
                    break
        except CloudError as exc:
            if self.cancel.is_set():  # our own cancel, not a cloud failure
                self._book_relay(relay, link, error="cancelled")
                return self.machine.cancel()
            self._book_relay(relay, link, error=str(exc))
            self.engine.cloud_failed(exc)
            self.record.fallbacks.append(str(exc))
            return self.machine.on_cloud_failed(str(exc), link.last.round_trip_ms)
        finally:
            relaying.clear()
            tokens.close()  # a cancelled relay: cancel the gRPC call now, not at garbage collection
        self._book_relay(relay, link)
        self.engine.cloud_succeeded()
        self._check_budget()
        return self.machine.on_cloud_done(link.last.finish or "abort", link.last.round_trip_ms)

    def _cancel_watch(self, link: CloudLink, relaying: threading.Event) -> None:
        """Esc must not wait for the LLM's first token: cancel the call as soon as asked."""
        while relaying.is_set():
            if self.cancel.wait(0.05):
                if relaying.is_set() and hasattr(link, "cancel_current"):
                    link.cancel_current()
                return

    def _book_relay(self, relay: RelayCost, link: CloudLink, error: str = "") -> None:
        out = link.last
        relay.tokens_received = len(out.tokens)
        relay.finish = "error" if error else out.finish
        relay.round_trip_ms = out.round_trip_ms
        relay.bytes_up, relay.bytes_down = out.bytes_up, out.bytes_down
        relay.cloud_prompt_tokens, relay.cloud_cached_tokens = out.prompt_tokens, out.cached_tokens
        relay.cloud_decode_tokens, relay.cloud_server_ms = out.completion_tokens, out.server_ms
        relay.resent_full_context, relay.error = out.resent_full_context, error

    def _check_budget(self) -> None:
        budget = self.settings.budget_usd
        if budget is None:
            return
        self.record.price(self.engine.prices)
        if self.record.money >= budget:
            self.machine.disable_cloud(f"budget ${budget:g} reached")
            self.record.fallbacks.append(BUDGET_REACHED)

    # -- bookkeeping ----------------------------------------------------------------------------

    def _emit(self, events: list[RelayEvent]) -> Iterator[RelayEvent]:
        for event in events:
            if isinstance(event, TokenEvent):
                event = dataclasses.replace(event, text=self._detok.push(event.token_id))
                self._add_span(event.source, event.text)
                if event.source == "slm":
                    self.record.slm_tokens += 1
                else:
                    self.record.llm_tokens += 1
            elif isinstance(event, RelayStarted):
                self.record.relays.append(RelayCost(event.n_requested, event.n_granted))
            elif isinstance(event, AnswerFinished):
                self.record.finish = event.reason
                self._add_span(self._last_source(), self._detok.flush())
            yield event

    def _add_span(self, source: str, text: str) -> None:
        if not text:
            return
        if self.spans and self.spans[-1][0] == source:
            self.spans[-1] = (source, self.spans[-1][1] + text)
        else:
            self.spans.append((source, text))

    def _last_source(self) -> str:
        return self.spans[-1][0] if self.spans else "slm"

    def _close(self, started: float) -> None:
        self.record.wall_ms = (time.perf_counter() - started) * 1e3
        self.record.price(self.engine.prices)
