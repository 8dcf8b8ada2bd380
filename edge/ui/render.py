"""Pure rendering for the chat app: relay events -> provenance spans -> coloured markdown (footer: `footer`).

Why this module exists apart from the widgets: everything the user sees about provenance (which
text the SLM wrote, which the cloud LLM wrote, where each relay happened and what it cost) is
decided here, without Textual, so it is unit-testable and reused by the markdown export.

How two colours survive markdown rendering. Markdown parsers know nothing about provenance, and
cutting the answer into one markdown document per span would break paragraphs and lists at every
relay. Instead `markdown_source` writes the whole answer as one markdown document with private-use
sentinel characters around LLM text and relay markers (placed after any line-start block syntax
such as `# `, `- `, fences, so they never change the parse). `ProvenanceMarkdown` renders that
document with Rich's Markdown and walks the rendered segments, dropping the sentinels and
colouring each piece by the sentinel state: SLM colour, LLM colour, or marker style. Separate open
and close sentinels (not toggles) mean a sentinel the parser swallowed (inside a link URL) only
mis-colours one span instead of inverting the rest.

Why streaming stays cheap. The document is split into top-level blocks at blank lines outside code
fences; each block's rendered lines are cached by (text, width), so while an answer grows only its
last block is parsed again. The app redraws at most ~20 times a second (see `edge.ui.app`).
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from rich.console import Console, ConsoleOptions, RenderResult
from rich.markdown import Markdown
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from edge.cost import CostRecord, RelayCost, RunCost
from edge.events import AnswerFinished, Notice, RelayEvent, RelayFinished, RelayStarted, TokenEvent
from edge.trace import AnswerTrace
from edge.ui.math_text import BOX_CLOSE, BOX_OPEN, MathText

SLM_COLOR = "#c8d3f5"
"""Text the small model on this machine wrote (a light neutral, the bulk of most answers)."""
LLM_COLOR = "#ffb86c"
"""Text the cloud LLM wrote (amber: it stands out against the SLM's text in light and dark themes)."""
MARK_COLOR = "#82aaff"
"""Relay markers and notices inside the answer."""

SpanKind = Literal["slm", "llm", "command", "relay", "notice", "end"]
TEXT_KINDS = ("slm", "llm", "command")

LLM_OPEN, LLM_CLOSE, MARK_OPEN, MARK_CLOSE = "\ue000", "\ue001", "\ue002", "\ue003"
BOX_BG = "#3b4261"
"""Background of a `\\boxed{…}` final answer (its text keeps its provenance colour)."""
_SENTINELS_RE = re.compile("[\ue000-\ue005]")  # LLM, marker and box (edge.ui.math_text) open/close
_SPLIT_RE = re.compile("([\ue000-\ue005])")
_COMMAND_RE = re.compile(r"<call>.*?(?:</call>|$)", re.S)
_FENCE_RE = re.compile(r"[ \t]{0,3}(`{3,}|~{3,})")
_FENCE_LINE_RE = re.compile(r"[ \t]*(?:`{3,}|~{3,})[^\n]*\n")
_BLOCK_PREFIX_RE = re.compile(r"(?:[ \t]*(?:#{1,6}[ \t]+|[-*+][ \t]+|\d{1,9}[.)][ \t]+|>[ \t]?|\|[ \t]*))*")
_MD_ESCAPE_RE = re.compile(r"([\\`*_\[\]<>|~#])")
NORMAL_ENDINGS = ("eos", "llm_eos")

NOTICE_LABELS = {
    "command_n0": "call N=0 ignored",
    "command_malformed": "malformed call ignored",
    "command_clamped": "N clamped",
    "command_unserved": "call not served",
    "budget_exhausted": "budget exhausted",
    "cloud_unavailable": "cloud unavailable → SLM only",
    "cloud_error": "cloud error",
}
END_LABELS = {
    "cancelled": "cancelled",
    "max_tokens": "stopped: answer token limit",
    "context_full": "stopped: context full",
    "error": "error",
}


@dataclass
class Span:
    """A run of answer text of one provenance, or a marker (relay, notice, end) between runs."""

    kind: SpanKind
    text: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    """relay: index, n_requested, n_granted, trigger, tokens_received, round_trip_ms, finish.
    notice: kind. end: reason."""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "meta": self.meta}


@dataclass
class AnswerView:
    """One answer as the UI knows it: spans built from relay events, plus live counters."""

    spans: list[Span] = field(default_factory=list)
    slm_tokens: int = 0
    llm_tokens: int = 0
    finish: str = ""
    """AnswerFinished.reason once the answer ended ("" while streaming)."""
    version: int = 0
    """Bumped on every change, so widgets redraw only when something is new."""
    trace: AnswerTrace = field(default_factory=AnswerTrace)
    """Confidence along the answer and where each relay fired (the "why" strip)."""

    def feed(self, event: RelayEvent) -> None:
        self.trace.feed(event)
        if isinstance(event, TokenEvent):
            self._token(event)
        elif isinstance(event, RelayStarted):
            meta = {"index": event.index, "n_requested": event.n_requested, "n_granted": event.n_granted}
            self.spans.append(Span("relay", meta={**meta, "trigger": event.trigger}))
        elif isinstance(event, RelayFinished):
            self._relay_finished(event)
        elif isinstance(event, Notice):
            self.spans.append(Span("notice", event.detail, {"kind": event.kind}))
        elif isinstance(event, AnswerFinished):
            self.end(event.reason, event.detail)
        self.version += 1

    def end(self, reason: str, detail: str = "") -> None:
        """Mark the answer finished; abnormal endings get a visible marker."""
        if self.finish:
            return
        self.finish = reason
        if reason not in NORMAL_ENDINGS:
            self.spans.append(Span("end", detail, {"reason": reason}))
        self.version += 1

    def relays(self) -> list[Span]:
        return [s for s in self.spans if s.kind == "relay"]

    def _token(self, event: TokenEvent) -> None:
        if event.source == "llm":
            self.llm_tokens += 1
        else:
            self.slm_tokens += 1
        kind: SpanKind = "command" if event.in_command else event.source
        if not event.text:
            return
        if self.spans and self.spans[-1].kind == kind:
            self.spans[-1].text += event.text
        else:
            self.spans.append(Span(kind, event.text))

    def _relay_finished(self, event: RelayFinished) -> None:
        for span in reversed(self.relays()):
            if span.meta.get("index") == event.index:
                span.meta.update(
                    tokens_received=event.tokens_received,
                    round_trip_ms=event.round_trip_ms,
                    finish=event.finish,
                )
                return

    @classmethod
    def from_spans(cls, spans: Iterable[Span], finish: str = "eos", trace: AnswerTrace | None = None) -> AnswerView:
        """Rebuild a finished answer from stored spans (history)."""
        return cls(spans=list(spans), finish=finish or "eos", trace=trace or AnswerTrace())


# ---------------------------------------------------------------- markers and visible text


def visible_text(span: Span) -> str:
    """What a text span shows: commands removed (the relay marker stands in for them), no sentinels."""
    text = _SENTINELS_RE.sub("", span.text)
    return _COMMAND_RE.sub("", text) if span.kind == "command" else text


def marker_text(span: Span) -> str:
    """The inline marker for a relay, notice or abnormal ending, e.g. `⟨cloud N=16 got 16 · 231 ms⟩`."""
    meta = span.meta
    if span.kind == "relay":
        n = f"N={meta.get('n_requested', '?')}"
        if meta.get("n_granted") not in (None, meta.get("n_requested")):
            n += f"→{meta['n_granted']}"
        if "tokens_received" not in meta:
            return f"⟨cloud {n} …⟩"
        tail = f" · {meta['finish']}" if meta.get("finish") in ("abort", "error") else ""
        return f"⟨cloud {n} got {meta['tokens_received']} · {meta.get('round_trip_ms', 0):.0f} ms{tail}⟩"
    if span.kind == "notice":
        label = NOTICE_LABELS.get(meta.get("kind", ""), meta.get("kind", "notice"))
    else:
        label = END_LABELS.get(meta.get("reason", ""), meta.get("reason", "stopped"))
    detail = " ".join(span.text.split())
    return f"⟨{label}: {detail[:120]}⟩" if detail else f"⟨{label}⟩"


def split_edges(text: str, at_line_start: bool) -> tuple[str, str, str]:
    """Split text into (lead, body, trail) so markers can go between lead and body safely.

    The lead is leading whitespace plus, when the body starts a line, markdown block syntax
    (headings, list bullets, quotes, table pipes, whole fence lines) that a marker placed before
    it would break. The trail is trailing whitespace.
    """
    i = len(text) - len(text.lstrip())
    if at_line_start or "\n" in text[:i]:
        while True:
            fence = _FENCE_LINE_RE.match(text, i)
            if fence is None:
                break
            i = fence.end()
            i += len(text[i:]) - len(text[i:].lstrip())
        i = _BLOCK_PREFIX_RE.match(text, i).end()  # type: ignore[union-attr]
    j = max(i, len(text.rstrip()))
    return text[:i], text[i:j], text[j:]


def _escape(text: str) -> str:
    return _MD_ESCAPE_RE.sub(r"\\\1", text)


def markdown_source(spans: Iterable[Span]) -> str:
    """The answer as one markdown document with provenance sentinels (see the module docstring)."""
    out: list[str] = []
    pending: list[str] = []
    for span in spans:
        if span.kind not in TEXT_KINDS:
            pending.append(MARK_OPEN + _escape(marker_text(span)) + MARK_CLOSE)
            continue
        text = visible_text(span)
        at_line_start = not out or out[-1].endswith("\n")
        lead, body, trail = split_edges(text, at_line_start)
        if not body:
            out.append(text)
            continue
        markers = "".join(m + " " for m in pending)
        pending.clear()
        if span.kind == "llm":
            body = LLM_OPEN + body + LLM_CLOSE
        out.append(lead + markers + body + trail)
    if pending:
        out.append((" " if out else "") + " ".join(pending))
    return "".join(out)


def split_blocks(source: str) -> list[str]:
    """Top-level markdown blocks: cut at blank lines that are outside fenced code."""
    blocks: list[str] = []
    current: list[str] = []
    fence = ""
    for line in source.split("\n"):
        plain = _SENTINELS_RE.sub("", line)
        opened = _FENCE_RE.match(plain)
        if opened:
            mark = opened.group(1)
            if not fence:
                fence = mark
            elif mark[0] == fence[0] and len(mark) >= len(fence) and not plain.strip()[len(mark) :]:
                fence = ""
        if not plain.strip() and not fence and not _SENTINELS_RE.search(line):
            if current:
                blocks.append("\n".join(current))
                current = []
            continue
        current.append(line)
    if current:
        blocks.append("\n".join(current))
    return blocks


# ---------------------------------------------------------------- the Rich renderable


class BlockCache:
    """Coloured segments per (block text, width, colour state on entry): while an answer grows,
    only its last block is parsed and coloured again."""

    def __init__(self, limit: int = 512) -> None:
        self.limit = limit
        self._blocks: dict[tuple[str, int, InkState], tuple[list[Segment], InkState]] = {}
        self.math = MathText()
        self.render_s = 0.0
        """Recent seconds per full render (moving average): the widget spaces redraws by it."""

    def segments(
        self, console: Console, options: ConsoleOptions, block: str, ink: _Ink
    ) -> tuple[list[Segment], InkState]:
        key = (block, options.max_width, ink.state())
        if key not in self._blocks:
            if len(self._blocks) >= self.limit:
                self._blocks.clear()
            lines = console.render_lines(Markdown(block), options, pad=False)
            while lines and not "".join(s.text for s in lines[0]):
                lines.pop(0)  # Rich starts a list with an empty line; blocks are spaced by the caller
            out: list[Segment] = []
            for line in lines:
                out.extend(_recolor(line, ink))
                out.append(Segment.line())
            self._blocks[key] = (out, ink.state())
        return self._blocks[key]


InkState = tuple[bool, bool, bool]


@dataclass
class _Ink:
    llm: bool = False
    mark: bool = False
    box: bool = False

    def state(self) -> InkState:
        return (self.llm, self.mark, self.box)

    def style(self, base: Style | None) -> Style:
        if self.mark:
            color = Style(color=MARK_COLOR, italic=True)
        else:
            color = Style(color=LLM_COLOR if self.llm else SLM_COLOR)
        if self.box:
            color += Style(bold=True, bgcolor=BOX_BG)
        return base + color if base else color

    def switch(self, sentinel: str) -> None:
        if sentinel in (LLM_OPEN, LLM_CLOSE):
            self.llm = sentinel == LLM_OPEN
        elif sentinel in (BOX_OPEN, BOX_CLOSE):
            self.box = sentinel == BOX_OPEN
        else:
            self.mark = sentinel == MARK_OPEN


def _recolor(line: list[Segment], ink: _Ink) -> Iterator[Segment]:
    for segment in line:
        if segment.control:
            yield segment
            continue
        for piece in _SPLIT_RE.split(segment.text):
            if len(piece) == 1 and _SENTINELS_RE.match(piece):
                ink.switch(piece)
            elif piece:
                yield Segment(piece, ink.style(segment.style))


class ProvenanceMarkdown:
    """Markdown with SLM/LLM colours and relay markers, from `markdown_source` output."""

    def __init__(self, source: str, cache: BlockCache | None = None) -> None:
        self.source = source
        self.cache = cache or BlockCache()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        start = time.perf_counter()
        ink = _Ink()
        out: list[Segment] = []
        for i, block in enumerate(split_blocks(self.source)):
            if i:
                out.append(Segment.line())
            segments, (ink.llm, ink.mark, ink.box) = self.cache.segments(console, options, block, ink)
            out += segments
        self.cache.render_s = 0.7 * self.cache.render_s + 0.3 * (time.perf_counter() - start)
        yield from out


def render_answer(view: AnswerView, cache: BlockCache | None = None) -> ProvenanceMarkdown | Text:
    """The answer as the chat shows it: markdown, provenance colours, math as Unicode."""
    cache = cache or BlockCache()
    source = cache.math.convert(markdown_source(view.spans))
    if not _SENTINELS_RE.sub("", source).strip():
        return Text("…", style=Style(color=MARK_COLOR, italic=True))
    return ProvenanceMarkdown(source, cache)


def styled_runs(renderable: Any, width: int = 100) -> list[tuple[str, str | None]]:
    """(text, colour) runs of a rendered answer, for tests and debugging."""
    console = Console(width=width, color_system="truecolor", force_terminal=True)
    runs: list[tuple[str, str | None]] = []
    for segment in console.render(renderable):
        color = segment.style.color if segment.style else None
        name = f"#{color.get_truecolor().hex[1:]}" if color is not None else None
        if segment.text.strip():
            runs.append((segment.text, name))
    return runs


# ---------------------------------------------------------------- cost records


def live_record(view: AnswerView, snapshot: CostRecord | None) -> CostRecord:
    """A cost record for an answer still streaming: the engine's latest snapshot (if any) topped up
    with the token and relay counts the events already showed."""
    record = copy.deepcopy(snapshot) if snapshot is not None else CostRecord()
    record.slm_tokens = max(record.slm_tokens, view.slm_tokens)
    record.llm_tokens = max(record.llm_tokens, view.llm_tokens)
    for span in view.relays()[len(record.relays) :]:
        meta = span.meta
        record.relays.append(
            RelayCost(
                n_requested=meta.get("n_requested", 0),
                n_granted=meta.get("n_granted", 0),
                tokens_received=meta.get("tokens_received", 0),
                round_trip_ms=meta.get("round_trip_ms", 0.0),
            )
        )
    return record


def record_from_dict(data: dict[str, Any]) -> CostRecord:
    """Inverse of `CostRecord.to_dict` (derived keys dropped, unknown keys ignored)."""
    names = {f.name for f in fields(CostRecord)}
    relay_names = {f.name for f in fields(RelayCost)}
    values = {k: v for k, v in data.items() if k in names and k != "relays"}
    relays = [RelayCost(**{k: v for k, v in r.items() if k in relay_names}) for r in data.get("relays", [])]
    return CostRecord(**values, relays=relays)


def chat_cost(records: Iterable[CostRecord]) -> RunCost:
    total = RunCost()
    for record in records:
        total.add(record)
    return total


def cloud_state_text(state: str, address: str | None) -> str:
    """The cloud link's state for the header."""
    where = f" · {address}" if address else ""
    if state == "connected":
        return f"cloud: connected{where}"
    if state == "embedded":
        return f"cloud: embedded local{where}"
    if state == "reconnecting":
        return f"cloud: reconnecting{where} → SLM only meanwhile"
    return "cloud: offline → SLM only"


def json_quote(text: str) -> str:
    """A one-line, exact quotation of text for the export's footnotes."""
    return json.dumps(text, ensure_ascii=False)
