"""Fakes for the pure relay core: a byte vocabulary, a scripted SLM and a scripted LLM.

The byte vocabulary has ids 0..255 for single bytes plus a few multi-byte tokens (ids >= 256) so
tests can split `<call>N</call>` across tokens anywhere, including mid-token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge.events import RelayEvent
from edge.relay.commands import CommandMask
from edge.relay.machine import CallCloud, Decode, Finish, RelayMachine, TokenizerView
from edge.relay.settings import RelaySettings

EOS = 300
MULTI = [b"<call>", b"</call>", b"<ca", b"ll>1", b"6</", b"call>", b"x.<call", b"l>", b"2</call>\n"]


def byte_vocab() -> list[bytes]:
    table = [bytes([i]) for i in range(256)] + MULTI
    return table + [b""] * (EOS - len(table)) + [b"<|eos|>"]


TOKEN_BYTES = byte_vocab()


def encode(text: str) -> list[int]:
    return list(text.encode())


def ids_of(*pieces: bytes | str) -> list[int]:
    """Token ids: a bytes piece is one multi-byte token, a str is split into single bytes."""
    out: list[int] = []
    for piece in pieces:
        out += [TOKEN_BYTES.index(piece)] if isinstance(piece, bytes) else encode(piece)
    return out


def view() -> TokenizerView:
    return TokenizerView(TOKEN_BYTES, frozenset({EOS}), encode, CommandMask(TOKEN_BYTES))


def text_of(ids: list[int]) -> str:
    return b"".join(TOKEN_BYTES[i] for i in ids).decode("utf-8", "replace")


@dataclass
class ScriptedSlm:
    """Emits `script` in order (as peaked logits), then EOS. `second` is the runner-up token."""

    script: list[int]
    second: int = ord("z")
    top1: float = 20.0
    uncertain: frozenset[int] = frozenset()
    """Positions where the top token is barely ahead (top-1 probability ~1 %), the first time only
    (after a relay the SLM has new context, so it is confident again)."""
    fed: list[int] = field(default_factory=list)
    _doubted: set[int] = field(default_factory=set)

    def logits(self, position: int) -> np.ndarray:
        out = np.zeros(len(TOKEN_BYTES), dtype=np.float32)
        out[self.second] = 5.0
        doubt = position in self.uncertain and position not in self._doubted
        self._doubted.add(position)
        top = 5.5 if doubt else self.top1
        out[self.script[position] if position < len(self.script) else EOS] = top
        return out


@dataclass
class Run:
    machine: RelayMachine
    events: list[RelayEvent] = field(default_factory=list)
    calls: list[CallCloud] = field(default_factory=list)
    finish: Finish | None = None

    @property
    def answer(self) -> str:
        return text_of(self.machine.answer_ids)

    def kinds(self, cls: type) -> list:
        return [e for e in self.events if isinstance(e, cls)]


def run_machine(
    slm: ScriptedSlm,
    llm_replies: list[tuple[list[int], str]] = (),
    settings: RelaySettings | None = None,
    prompt: list[int] | None = None,
    cloud_fails_at: int | None = None,
    call_head=None,
) -> Run:
    """Drive a RelayMachine to the end. The SLM's script position = SLM tokens sampled so far."""
    machine = RelayMachine(prompt or encode("Q?"), view(), settings or RelaySettings(), call_head=call_head)
    run = Run(machine)
    events, action = machine.start()
    replies = iter(llm_replies)
    for _ in range(10_000):
        run.events += events
        if isinstance(action, Finish):
            run.finish = action
            return run
        if isinstance(action, Decode):
            assert action.feed, "the machine must always feed something new"
            slm.fed += action.feed
            # What the SLM holds must be the prompt plus the answer so far, in order: a feed that
            # repeats or skips tokens corrupts its cache.
            assert slm.fed == machine.prompt_ids + machine.answer_ids, "feed continuity broken"
            events, action = machine.on_logits(slm.logits(machine.answer_sources.count("slm")))
            continue
        run.calls.append(action)
        if cloud_fails_at == len(run.calls):
            events, action = machine.on_cloud_failed("cloud down")
            continue
        ids, finish = next(replies)
        events = machine.on_llm_tokens(ids)
        more, action = machine.on_cloud_done(finish)
        events += more
    raise AssertionError("machine did not finish")
