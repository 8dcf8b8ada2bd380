"""The cost footer: the current answer's and the conversation's figures, fitted to the width.

The figures are formatted once (`FooterFigures`, compared to the cost record in tests); the line
is then laid out from the longest form down to the shortest that fits the terminal, dropping the
least needed parts first, so it shortens instead of wrapping mid-figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.style import Style
from rich.text import Text

from edge.cost import CostRecord, RunCost
from edge.ui.render import LLM_COLOR, SLM_COLOR

Part = tuple[str, Style | str]


def format_money(usd: float) -> str:
    return f"${usd:.6f}" if usd < 1 else f"${usd:,.2f}"


def format_bytes(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    if n < 1_000_000:
        return f"{n / 1000:.1f} kB"
    return f"{n / 1e6:.1f} MB"


def format_ms(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


@dataclass(frozen=True)
class FooterFigures:
    """The live footer's figures, already formatted (tests compare them to a cost record)."""

    llm_share: str
    relays: str
    bytes_up: str
    bytes_down: str
    edge_ms: str
    cloud_ms: str
    answer_usd: str
    answer_llm_only_usd: str
    chat_usd: str
    chat_llm_only_usd: str

    def text(self, width: int | None = None) -> Text:
        """The longest layout that fits in `width` cells (all of it when `width` is None)."""
        layouts = self._layouts()
        for parts in layouts:
            line = Text.assemble(*parts)
            if width is None or line.cell_len <= width:
                return line
        return Text.assemble(*layouts[-1])

    def _layouts(self) -> list[list[Part]]:
        llm = Style(color=LLM_COLOR, bold=True)
        legend: list[Part] = [("■ SLM ", Style(color=SLM_COLOR)), ("■ LLM ", Style(color=LLM_COLOR)), ("│ ", "dim")]
        share: list[Part] = [("LLM ", "dim"), (self.llm_share, llm), (f" · {self.relays}", "")]
        traffic: list[Part] = [(f" · ↑{self.bytes_up} ↓{self.bytes_down}", "")]
        times: list[Part] = [(f" · edge {self.edge_ms} · cloud {self.cloud_ms}", "")]
        answer: list[Part] = [(" │ answer ", ""), (self.answer_usd, "bold")]
        answer_ref: list[Part] = [(f" (LLM-only {self.answer_llm_only_usd})", "dim")]
        chat: list[Part] = [(" · chat ", ""), (self.chat_usd, "bold")]
        chat_ref: list[Part] = [(f" (LLM-only {self.chat_llm_only_usd})", "dim")]
        short_times: list[Part] = [(f" · {self.edge_ms} edge · {self.cloud_ms} cloud", "")]
        money: list[Part] = [(" · ", ""), (self.answer_usd, "bold")]
        return [
            legend + share + traffic + times + answer + answer_ref + chat + chat_ref,
            legend + share + traffic + times + answer + answer_ref + chat,
            legend + share + traffic + times + answer + chat,
            share + traffic + times + answer + chat,
            share + traffic + short_times + money,
            share + traffic + money,
            share + money,
        ]


def footer_figures(answer: CostRecord, chat: RunCost) -> FooterFigures:
    relays = len(answer.relays)
    return FooterFigures(
        llm_share=f"{answer.llm_share * 100:.1f}%",
        relays=f"{relays} relay" + ("" if relays == 1 else "s"),
        bytes_up=format_bytes(answer.bytes_up),
        bytes_down=format_bytes(answer.bytes_down),
        edge_ms=format_ms(answer.edge_ms),
        cloud_ms=format_ms(answer.cloud_ms),
        answer_usd=format_money(answer.money),
        answer_llm_only_usd=format_money(answer.money_llm_only),
        chat_usd=format_money(chat.money),
        chat_llm_only_usd=format_money(chat.money_llm_only),
    )
