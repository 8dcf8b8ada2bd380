"""Why did it call? A strip under each answer (F4 shows or hides them all) and a relay's details.

The strip draws the SLM's confidence along the answer (`edge.trace.sparkline`: ▁ unsure … █ sure,
▔ where the cloud wrote) in the two provenance colours, with a clickable ▲k under the cell where
relay k fired and a summary line. Clicking a ▲ opens `RelayDetailsScreen`: trigger, N requested and
granted, round trip, bytes, the cloud's prefill / cached / decode tokens, money.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from edge.trace import AnswerTrace, RelayMark, sparkline
from edge.ui.footer import format_bytes, format_money
from edge.ui.render import LLM_COLOR, MARK_COLOR, SLM_COLOR

TRIGGERS = {"command": "the SLM's own <call>", "head": "call head", "entropy": "entropy controller",
            "random": "random controller", "cloud-only": "cloud-only answer"}  # fmt: skip


def relay_rows(mark: RelayMark) -> list[tuple[str, str]]:
    """A relay's details as (label, value) rows (the details screen and the markdown export)."""
    n = f"{mark.n_requested}" + ("" if mark.n_granted == mark.n_requested else f" → granted {mark.n_granted}")
    rows = [
        ("trigger", TRIGGERS.get(mark.trigger, mark.trigger)),
        ("fired at answer token", str(mark.at_token)),
        ("N requested", n),
        ("tokens received", f"{mark.tokens_received} ({mark.finish or 'running'})"),
        ("round trip", f"{mark.round_trip_ms:.0f} ms"),
    ]
    cost = mark.cost
    if cost:
        rows += [
            ("bytes up / down", f"{format_bytes(cost.get('bytes_up', 0))} / {format_bytes(cost.get('bytes_down', 0))}"),
            (
                "cloud prefill / cached / decode",
                f"{cost.get('cloud_prompt_tokens', 0)} / {cost.get('cloud_cached_tokens', 0)}"
                f" / {cost.get('cloud_decode_tokens', 0)} tokens",
            ),
            ("cloud server time", f"{cost.get('cloud_server_ms', 0.0):.0f} ms"),
            ("money", format_money(cost.get("money", 0.0))),
        ]
        if cost.get("error"):
            rows.append(("error", str(cost["error"])))
    return rows


def strip_content(trace: AnswerTrace, width: int, answer_id: str) -> Content:
    """Three lines: the confidence sparkline, the relay markers (clickable), a summary."""
    cells = sparkline(trace, max(1, width))
    if not cells:
        return Content.styled("why: no tokens yet", f"italic {MARK_COLOR}")
    spark = Content.assemble(*[(c.char, LLM_COLOR if c.source == "llm" else SLM_COLOR) for c in cells])
    markers = Content("")
    column = 0
    for i, cell in enumerate(cells):
        if cell.relay is None or i < column:
            continue
        label = f"▲{cell.relay}"
        action = f"app.relay_details('{answer_id}', {cell.relay})"
        markers += Content(" " * (i - column)) + Content.from_markup(f"[bold {MARK_COLOR} @click={action}]{label}[/]")
        column = i + len(label)
    summary = _summary(trace)
    return Content("\n").join([spark, markers, Content.styled(summary, f"italic {MARK_COLOR}")])


def _summary(trace: AnswerTrace) -> str:
    low = trace.lowest()
    parts = [f"{len(trace.relays)} relay" + ("" if len(trace.relays) == 1 else "s")]
    if trace.relays:
        parts.append("click ▲ for details")
    if low is not None:
        parts.append(f"least sure: token {low[0]} at p={low[1]:.2f}")
    return "why: " + " · ".join(parts) + "  (▁ unsure … █ sure, ▔ cloud)"


class WhyStrip(Static):
    """The "why" strip of one answer; hidden unless the chat view has the `-why` class (F4)."""

    def __init__(self, trace: AnswerTrace, answer_id: str) -> None:
        super().__init__("", classes="why")
        self.trace = trace
        self.answer_id = answer_id
        self._drawn: tuple[int, ...] = ()

    def on_mount(self) -> None:
        self.redraw()

    def on_resize(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        width = self.content_size.width or 60
        done = sum(1 for r in self.trace.relays if r.finish) + sum(1 for r in self.trace.relays if r.cost)
        key = (len(self.trace.sources), len(self.trace.relays), done, width)
        if key == self._drawn:
            return
        self._drawn = key
        self.update(strip_content(self.trace, width, self.answer_id))


class RelayDetailsScreen(ModalScreen[None]):
    """One relay's details; Esc or Enter closes."""

    BINDINGS = [Binding("escape,enter,q", "dismiss", "Close")]

    def __init__(self, mark: RelayMark) -> None:
        super().__init__()
        self.mark = mark

    def compose(self) -> ComposeResult:
        width = max(len(label) for label, _ in relay_rows(self.mark))
        with Vertical(id="relay-box", classes="modal-box"):
            yield Label(f"Relay {self.mark.index}", classes="modal-title")
            for label, value in relay_rows(self.mark):
                yield Static(Content.assemble((f"{label:<{width}}  ", "dim"), value), classes="relay-row")
            yield Static("Esc close", classes="modal-hint")
