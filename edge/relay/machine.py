"""The relay decision: a pure state machine over token ids. No I/O, no clocks, no models.

The same machine drives the chat app, the CLI, the evaluator and the GRPO rollouts. A driver
asks it what to do next and reports what happened:

    action = machine.start()
    loop:
      Decode(feed)          -> logits = slm.forward(feed); action = machine.on_logits(logits)
      CallCloud(context, n) -> for ids in llm stream: machine.on_llm_tokens(ids)
                               action = machine.on_cloud_done(finish) | machine.on_cloud_failed(why)
      Finish(reason)        -> stop
    every call returns (events, action); events go to the UI / cost record.

Two contexts are kept. The SLM's context (its KV cache) holds the prompt, everything the SLM
wrote *including* its `<call>N</call>` commands, and the LLM's spans, appended as one chunk.
The LLM's context is the same conversation with every command cut out (see `commands.py`); it is
append-only at the token level, so the cloud's per-session KV cache stays valid.

Policies: `learned` relays on the SLM's own commands; `head` relays `fixed_n` tokens when the
call head's probability (a function of the SLM's logits, given to the machine) >= `head_tau`;
`entropy` relays `fixed_n` tokens when the
SLM's top-1 probability < tau (the low-confidence sample is discarded and the LLM writes that
position instead); `random` does the same at rate p per token; `never` is the SLM alone;
`cloud-only` hands the whole answer to the LLM. A command that cannot be served (`never`, cloud
down or over budget, relay limit reached) is a no-op, like N = 0, up to
`settings.unserved_commands` of them; after that the SLM continues with commands masked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from common.sampling import sample, top1_probability
from edge.events import AnswerFinished, Notice, RelayEvent, RelayFinished, RelayStarted, TokenEvent
from edge.relay.commands import Command, CommandMask, CommandScanner, Malformed, cut_commands
from edge.relay.settings import RelaySettings


@dataclass(frozen=True)
class Decode:
    """Feed these ids to the SLM (may be empty only never: there is always something new)."""

    feed: list[int]


@dataclass(frozen=True)
class CallCloud:
    """Ask the LLM for up to `n` tokens after `context` (the LLM's full, command-free context)."""

    context: list[int]
    n: int


@dataclass(frozen=True)
class Finish:
    reason: str
    detail: str = ""


Action = Decode | CallCloud | Finish
Step = tuple[list[RelayEvent], Action]


@dataclass(frozen=True)
class TokenizerView:
    """What the machine needs to know about the shared tokenizer."""

    token_bytes: Sequence[bytes]
    eos_ids: frozenset[int]
    encode: Callable[[str], list[int]]
    mask: CommandMask


@dataclass
class _Segment:
    """SLM tokens not yet committed to the LLM context, and the commands found in them."""

    ids: list[int] = field(default_factory=list)
    scanner: CommandScanner = field(default_factory=CommandScanner)
    spans: list[tuple[int, int]] = field(default_factory=list)


def without_commands(ids: Sequence[int], tok: TokenizerView) -> list[int]:
    """`ids` with every complete `<call>N</call>` cut out (the LLM's view of a stretch of text)."""
    scanner, spans = CommandScanner(), []
    for tid in ids:
        found = scanner.push(tok.token_bytes[tid])
        if isinstance(found, Command):
            spans.append((found.start, found.end))
    return cut_commands(ids, tok.token_bytes, spans, tok.encode) if spans else list(ids)


class RelayMachine:
    def __init__(
        self,
        prompt_ids: list[int],
        tokenizer: TokenizerView,
        settings: RelaySettings,
        *,
        cloud_available: bool = True,
        cloud_max_n: int | None = None,
        cloud_max_context: int | None = None,
        call_head: Callable[[np.ndarray], float] | None = None,
    ) -> None:
        if settings.policy == "head" and call_head is None:
            raise ValueError("policy head needs a call head for this SLM")
        self.call_head = call_head
        """Logits -> probability of calling (policy `head`)."""
        self.settings = settings
        self.cloud_max_n = cloud_max_n
        """The server's cap on N per relay (ModelInfo); longer cloud-only answers take several relays."""
        self.cloud_max_context = cloud_max_context
        """The server's context limit (ModelInfo): N is cut so the LLM's context stays inside it."""
        self.tok = tokenizer
        self.prompt_ids = list(prompt_ids)
        self.answer_ids: list[int] = []
        self.answer_sources: list[str] = []
        # Earlier turns' answers come back in the prompt with their commands: cut them for the LLM
        # exactly as within a turn.
        self.llm_context: list[int] = without_commands(prompt_ids, tokenizer)
        self.relays = 0
        self.unserved = 0
        """Commands written that could not be served (no-ops)."""
        self.cloud_reason = "" if cloud_available else "cloud unavailable"
        self._segment = _Segment()
        self._pending_feed: list[int] = []
        self._relay_received = 0
        self._llm_eos = False
        self._rng = np.random.default_rng(settings.seed)
        self._tail = b""  # last bytes of the SLM's text, for the command mask
        self._last_logits: np.ndarray | None = None
        """The SLM's logits for the next position, kept so that a relay that fails before any LLM
        token lets the SLM go on from them instead of being fed anything again."""
        self.finished: Finish | None = None

    # -- public API -------------------------------------------------------------------------

    def start(self) -> Step:
        if self.settings.policy == "cloud-only" and self.cloud_usable:
            self._pending_feed = list(self.prompt_ids)
            return self._call([], self.settings.max_new_tokens, "cloud-only")
        return [], Decode(list(self.prompt_ids))

    def on_logits(self, logits: np.ndarray) -> Step:
        if self.remaining <= 0:
            return self._finish([], "max_tokens")
        self._last_logits = logits
        confidence = top1_probability(logits)
        trigger = self._policy_trigger(confidence, logits)
        if trigger is not None:
            return self._call([], self.settings.fixed_n, trigger)
        if not self._commands_allowed:
            if self.unserved >= self.settings.unserved_commands:
                logits = self.tok.mask.apply(logits, self._tail)
        elif self.settings.call_bias and not self._segment.scanner.open_command_pending():
            logits = self.tok.mask.boost(logits, self._tail, self.settings.call_bias)
        token = sample(logits, self._rng, self.settings.temperature, self.settings.top_p)
        if token in self.tok.eos_ids:
            return self._finish([], "eos")
        return self._on_slm_token(token, confidence)

    def on_llm_tokens(self, ids: Sequence[int]) -> list[RelayEvent]:
        events: list[RelayEvent] = []
        for tid in ids:
            if self._llm_eos or self.remaining <= 0:
                break
            self._relay_received += 1
            self.llm_context.append(tid)
            if tid in self.tok.eos_ids:
                self._llm_eos = True
                break
            self._append_answer(tid, "llm")
            self._pending_feed.append(tid)
            events.append(TokenEvent(tid, "llm"))
        return events

    def on_cloud_done(self, finish: str, round_trip_ms: float = 0.0) -> Step:
        events: list[RelayEvent] = [RelayFinished(self.relays, self._relay_received, finish, round_trip_ms)]
        if finish == "eos" or self._llm_eos:
            return self._finish(events, "llm_eos")
        if self.remaining <= 0:
            return self._finish(events, "max_tokens")
        if self.settings.policy == "cloud-only" and self.cloud_usable and self._relay_received:
            return self._call(events, self.remaining, "cloud-only")  # the server's cap split it
        return events, Decode(self._take_feed())

    def on_cloud_failed(self, reason: str, round_trip_ms: float = 0.0) -> Step:
        """The relay failed (tokens already received stay). The SLM continues alone."""
        self.disable_cloud(reason)
        events: list[RelayEvent] = [
            RelayFinished(self.relays, self._relay_received, "error", round_trip_ms),
            Notice("cloud_unavailable", reason),
        ]
        return self._resume(events)

    def disable_cloud(self, reason: str) -> None:
        self.cloud_reason = reason

    def cancel(self) -> Step:
        return self._finish([], "cancelled")

    def stop(self, reason: str, detail: str = "") -> Step:
        """End the answer for a reason found outside the machine (e.g. the SLM's context is full)."""
        return self._finish([], reason, detail)

    # -- state queries ------------------------------------------------------------------------

    @property
    def cloud_usable(self) -> bool:
        return not self.cloud_reason

    @property
    def remaining(self) -> int:
        return self.settings.max_new_tokens - len(self.answer_ids)

    @property
    def _commands_allowed(self) -> bool:
        return self.settings.policy == "learned" and self.cloud_usable and self.relays < self.settings.max_relays

    # -- internals ----------------------------------------------------------------------------

    def _policy_trigger(self, confidence: float, logits: np.ndarray) -> str | None:
        s = self.settings
        if not self.cloud_usable or self.relays >= s.max_relays:
            return None
        if s.policy == "head" and self.call_head is not None and self.call_head(logits) >= s.head_tau:
            return "head"
        if s.policy == "entropy" and confidence < s.entropy_tau:
            return "entropy"
        if s.policy == "random" and self._rng.random() < s.random_rate:
            return "random"
        return None

    def _on_slm_token(self, token: int, confidence: float | None = None) -> Step:
        self._append_answer(token, "slm")
        self._pending_feed.append(token)
        seg = self._segment
        seg.ids.append(token)
        found = seg.scanner.push(self.tok.token_bytes[token])
        in_command = isinstance(found, Command) or seg.scanner.open_command_pending()
        events: list[RelayEvent] = [TokenEvent(token, "slm", in_command=in_command, confidence=confidence)]
        if isinstance(found, Malformed):
            events.append(Notice("command_malformed", found.text))
        elif isinstance(found, Command):
            seg.spans.append((found.start, found.end))
            return self._on_command(events, found)
        if self.remaining <= 0:
            return self._finish(events, "max_tokens")
        return events, Decode(self._take_feed())

    def _on_command(self, events: list[RelayEvent], command: Command) -> Step:
        if command.n == 0:
            events.append(Notice("command_n0", "N = 0: no call"))
        elif not self._commands_allowed:
            self.unserved += 1
            events.append(Notice("command_unserved", self._unserved_reason()))
        else:
            if command.n > self.settings.max_n:
                events.append(Notice("command_clamped", f"N = {command.n} clamped to {self.settings.max_n}"))
            return self._call(events, command.n, "command")
        if self.remaining <= 0:
            return self._finish(events, "max_tokens")
        return events, Decode(self._take_feed())

    def _unserved_reason(self) -> str:
        if self.settings.policy != "learned":
            why = f"policy {self.settings.policy}"
        elif not self.cloud_usable:
            why = self.cloud_reason
        else:
            why = f"relay limit {self.settings.max_relays} reached"
        return f"command not served ({why}): the SLM goes on"

    def _call(self, events: list[RelayEvent], n_requested: int, trigger: str) -> Step:
        self._commit_segment()
        self.relays += 1
        self._relay_received = 0
        self._llm_eos = False
        cap = self.cloud_max_n or self.remaining
        if self.cloud_max_context:
            cap = min(cap, self.cloud_max_context - 1 - len(self.llm_context))
        granted = max(0, min(n_requested, self.settings.max_n, self.remaining, cap))
        if trigger == "cloud-only":
            granted = max(0, min(self.remaining, cap))
        if granted == 0 and n_requested > 0:  # the LLM's context is full: the SLM goes on alone
            self.relays -= 1
            self.disable_cloud("the LLM's context is full")
            events.append(Notice("cloud_unavailable", "the LLM's context is full"))
            return self._resume(events)
        events.append(RelayStarted(self.relays, n_requested, granted, trigger))  # type: ignore[arg-type]
        return events, CallCloud(list(self.llm_context), granted)

    def _resume(self, events: list[RelayEvent]) -> Step:
        """The SLM carries on alone after a relay that failed or was not made."""
        if self.remaining <= 0:
            return self._finish(events, "max_tokens")
        feed = self._take_feed()
        if feed:  # the command's last token, the LLM's tokens, or (cloud-only) the prompt
            return events, Decode(feed)
        if self._last_logits is None:  # nothing ever reached the SLM: start from the prompt
            return events, Decode(list(self.prompt_ids))
        # A controller relay (head/entropy/random) brought nothing: everything is already in the SLM's
        # cache, so sample from the logits it had (the cloud is off now: no trigger).
        more, action = self.on_logits(self._last_logits)
        return events + more, action

    def _commit_segment(self) -> None:
        seg = self._segment
        self.llm_context += cut_commands(seg.ids, self.tok.token_bytes, seg.spans, self.tok.encode)
        self._segment = _Segment()

    def _append_answer(self, token: int, source: str) -> None:
        self.answer_ids.append(token)
        self.answer_sources.append(source)
        self._tail = (self._tail + self.tok.token_bytes[token])[-8:]

    def _take_feed(self) -> list[int]:
        feed, self._pending_feed = self._pending_feed, []
        return feed

    def _finish(self, events: list[RelayEvent], reason: str, detail: str = "") -> Step:
        self.finished = Finish(reason, detail)
        events.append(AnswerFinished(reason, detail))  # type: ignore[arg-type]
        return events, self.finished
