"""A scripted stand-in for `RelayEngine`, for the chat app's Pilot tests (no models, no network).

`ScriptedEngine.answer` returns a `ScriptedStream` that yields a fixed list of relay events with
small sleeps, like the real blocking generator run in a thread worker. Scripts can pause at a
gate (so a test can look at a half-streamed answer), wait on the cancel Event (Esc), raise
mid-answer (the cloud vanished with an error) or drop the link to "offline" with a Notice.
Every call is recorded in `calls` (messages and settings), as llm's fake models do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from edge.cost import CostRecord, PriceTable, RelayCost
from edge.events import AnswerFinished, Notice, RelayEvent, RelayFinished, RelayStarted, TokenEvent
from edge.relay.settings import RelaySettings

SLM_BEFORE = ["Let", " me", " think", "."]
COMMAND = ["<call>", "4", "</call>"]
LLM_SPAN = [" **42**", " is", " the", " answer."]
SLM_AFTER = [" Done", "!"]


def relay_answer(round_trip_ms: float = 231.0) -> tuple[list[RelayEvent], CostRecord, str]:
    """One SLM span, a `<call>4</call>` relay the LLM fills with 4 tokens, one more SLM span."""
    tid = iter(range(100, 1000))
    events: list[RelayEvent] = [TokenEvent(next(tid), "slm", t) for t in SLM_BEFORE]
    events += [TokenEvent(next(tid), "slm", t, in_command=True) for t in COMMAND]
    events.append(RelayStarted(index=1, n_requested=4, n_granted=4, trigger="command"))
    events += [TokenEvent(next(tid), "llm", t) for t in LLM_SPAN]
    events.append(RelayFinished(index=1, tokens_received=4, finish="length", round_trip_ms=round_trip_ms))
    events += [TokenEvent(next(tid), "slm", t) for t in SLM_AFTER]
    events.append(AnswerFinished("eos"))
    relay = RelayCost(
        n_requested=4,
        n_granted=4,
        tokens_received=4,
        finish="length",
        round_trip_ms=round_trip_ms,
        bytes_up=1234,
        bytes_down=56,
        cloud_prompt_tokens=20,
        cloud_decode_tokens=4,
        cloud_server_ms=120.0,
    )
    record = CostRecord(
        prompt_tokens=12,
        slm_prefill_ms=40.0,
        slm_decode_ms=372.0,
        slm_tokens=len(SLM_BEFORE) + len(COMMAND) + len(SLM_AFTER),
        llm_tokens=len(LLM_SPAN),
        relays=[relay],
        wall_ms=700.0,
    )
    record.price(PriceTable())
    text = "".join(SLM_BEFORE + COMMAND + LLM_SPAN + SLM_AFTER)
    return events, record, text


MATH_SLM_BEFORE = ["Each", " box", " holds", " 12", ":", "\n\n", "\\[", " 3", " \\times"]
MATH_LLM_SPAN = [" 12", " =", " 36", " \\]"]
MATH_SLM_AFTER = ["\n\n", "He", " eats", " \\(", "\\frac", "{3}", "{4}", "\\)", " of", " them", ",", " so",
                  " \\(", "\\boxed", "{27}", "\\)", " are", " eaten", "."]  # fmt: skip


def math_relay_answer() -> tuple[list[RelayEvent], CostRecord, str]:
    """An answer in the LaTeX a math model writes, with a relay in the middle of a display formula."""
    tid = iter(range(2000, 3000))
    sure = [0.1 if i == len(MATH_SLM_BEFORE) - 1 else 0.95 for i in range(len(MATH_SLM_BEFORE))]  # unsure at `\\times`
    events: list[RelayEvent] = [
        TokenEvent(next(tid), "slm", t, confidence=p) for t, p in zip(MATH_SLM_BEFORE, sure, strict=True)
    ]
    events += [TokenEvent(next(tid), "slm", t, in_command=True, confidence=0.9) for t in COMMAND]
    events.append(RelayStarted(index=1, n_requested=4, n_granted=4, trigger="command"))
    events += [TokenEvent(next(tid), "llm", t) for t in MATH_LLM_SPAN]
    events.append(RelayFinished(index=1, tokens_received=4, finish="length", round_trip_ms=412.0))
    events += [TokenEvent(next(tid), "slm", t, confidence=0.97) for t in MATH_SLM_AFTER]
    events.append(AnswerFinished("eos"))
    _, record, _ = relay_answer(412.0)
    text = "".join(MATH_SLM_BEFORE + COMMAND + MATH_LLM_SPAN + MATH_SLM_AFTER)
    return events, record, text


def slm_answer(text: str = "Plain SLM reply.") -> tuple[list[RelayEvent], CostRecord, str]:
    words = text.split(" ")
    tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
    events: list[RelayEvent] = [TokenEvent(i, "slm", t) for i, t in enumerate(tokens)]
    events.append(AnswerFinished("eos"))
    record = CostRecord(prompt_tokens=5, slm_decode_ms=50.0, slm_tokens=len(tokens))
    record.price(PriceTable())
    return events, record, text


@dataclass
class Script:
    """What one `answer` call does."""

    events: list[RelayEvent]
    record: CostRecord
    text: str
    delay: float = 0.005
    """Seconds slept before each event (the model's pace)."""
    gate_after: int | None = None
    """Block after this many events until `gate` is set (a test looks at the partial answer)."""
    gate: threading.Event = field(default_factory=threading.Event)
    wait_for_cancel_after: int | None = None
    """After this many events, wait on the cancel Event and finish "cancelled" (Esc)."""
    raise_after: int | None = None
    """After this many events, raise `error` (the cloud disappeared with an exception)."""
    error: Exception = field(default_factory=lambda: ConnectionError("cloud connection reset"))
    offline_after: int | None = None
    """After this many events, emit Notice(cloud_unavailable) and set the engine offline."""


class ScriptedStream:
    """Iterable like the engine's answer stream; `record` and `text` are final after iteration."""

    def __init__(self, engine: ScriptedEngine, script: Script, cancel: threading.Event | None) -> None:
        self.engine = engine
        self.script = script
        self.cancel = cancel or threading.Event()
        self.record = CostRecord()
        self.text = ""

    def __iter__(self) -> Iterator[RelayEvent]:
        s = self.script
        for i, event in enumerate(s.events):
            yield from self._hooks(i)
            if self.cancel.is_set():
                yield self._cancelled()
                return
            time.sleep(s.delay)
            if isinstance(event, TokenEvent):
                self.text += event.text
            yield event
        self.record, self.text = s.record, s.text

    def _hooks(self, i: int) -> Iterator[RelayEvent]:
        s = self.script
        if i == s.gate_after:
            s.gate.wait(10)
        if i == s.offline_after:
            self.engine.cloud_state = "offline"
            yield Notice("cloud_unavailable", "connection refused")
        if i == s.raise_after:
            raise s.error
        if i == s.wait_for_cancel_after:
            self.cancel.wait(10)

    def _cancelled(self) -> AnswerFinished:
        self.record = CostRecord(prompt_tokens=self.script.record.prompt_tokens)
        return AnswerFinished("cancelled")


class ScriptedEngine:
    """Implements what the chat app uses of `RelayEngine`."""

    def __init__(
        self,
        *scripts: Script,
        cloud_state: str = "embedded",
        cloud_address: str | None = "127.0.0.1:50051",
        max_context: int = 4096,
    ) -> None:
        self.scripts = list(scripts)
        self.cloud_state = cloud_state
        self.cloud_address = cloud_address
        self.max_context = max_context
        self.calls: list[dict[str, Any]] = []
        self.streams: list[ScriptedStream] = []

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) + 4 for m in messages)

    def answer(
        self, messages: list[dict[str, str]], settings: RelaySettings, cancel: threading.Event | None = None
    ) -> ScriptedStream:
        self.calls.append({"messages": [dict(m) for m in messages], "settings": settings, "cancel": cancel})
        script = self.scripts.pop(0) if len(self.scripts) > 1 else self.scripts[0]
        stream = ScriptedStream(self, script, cancel)
        self.streams.append(stream)
        return stream


def script(kind: Callable[[], tuple[list[RelayEvent], CostRecord, str]] = relay_answer, **kw: Any) -> Script:
    events, record, text = kind()
    return Script(events, record, text, **kw)


async def wait_until(pilot: Any, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `predicate` between pilot pauses: one `pause()` is not enough when a thread worker
    posts messages (scheduling differs between Python versions and loaded CI machines)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout:.1f} s")
        await pilot.pause(0.02)
