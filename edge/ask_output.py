"""Terminal rendering for `relay ask`: the LLM's spans in another colour with relay markers, then
a cost summary. Rich drops the colours when stdout is not a terminal; the markers stay."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from edge.cost import CostRecord
from edge.events import AnswerFinished, Notice, RelayEvent, RelayFinished, RelayStarted, TokenEvent

SLM_STYLE = "default"
LLM_STYLE = "bold cyan"
COMMAND_STYLE = "dim"


class AnswerPrinter:
    def __init__(self, quiet: bool = False) -> None:
        self.out = Console(highlight=False, soft_wrap=True, quiet=quiet)
        self.err = Console(stderr=True, highlight=False)

    def status(self, message: str) -> None:
        self.err.print(f"[dim]{message}[/dim]")

    def event(self, event: RelayEvent) -> None:
        match event:
            case TokenEvent(text=text, source=source, in_command=in_command) if text:
                style = COMMAND_STYLE if in_command else LLM_STYLE if source == "llm" else SLM_STYLE
                self.out.print(text, style=style, end="", markup=False)
            case RelayStarted(n_requested=n, n_granted=granted):
                self.out.print(f"⟨cloud N={n}{'' if granted == n else f'→{granted}'}⟩", style="magenta", end="")
            case RelayFinished(tokens_received=got, round_trip_ms=ms, finish=finish):
                self.out.print(f"⟨/cloud {got} tok · {ms:.0f} ms · {finish}⟩", style="magenta", end="")
            case Notice(kind=kind, detail=detail):
                self.status(f"\n[{kind}] {detail}")
            case AnswerFinished(reason=reason, detail=detail):
                self.out.print()
                if reason not in ("eos", "llm_eos"):
                    self.status(f"answer ended: {reason} {detail}".rstrip())

    def summary(self, record: CostRecord, currency: str) -> None:
        table = Table(title="cost of this answer", show_header=False, box=None)
        rows = [
            (
                "tokens (SLM / LLM)",
                f"{record.slm_tokens} / {record.llm_tokens}  (LLM share {record.llm_share:.1%})",
            ),
            ("relays", str(len(record.relays))),
            ("bytes up / down", f"{record.bytes_up} / {record.bytes_down}"),
            ("edge ms (prefill + decode)", f"{record.slm_prefill_ms:.0f} + {record.slm_decode_ms:.0f}"),
            ("cloud server ms", f"{record.cloud_ms:.0f}"),
            ("wall ms", f"{record.wall_ms:.0f}"),
            ("money", f"{record.money:.6f} {currency}  (LLM alone: {record.money_llm_only:.6f})"),
        ]
        if record.fallbacks:
            rows.append(("fallbacks", "; ".join(record.fallbacks)))
        for key, value in rows:
            table.add_row(key, value)
        self.err.print(table)
