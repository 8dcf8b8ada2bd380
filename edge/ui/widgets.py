"""Widgets of the chat view: the user's prompt, a streaming answer, inline notices, the cost footer.

They hold no logic about relays or money: `edge.ui.render` decides what an answer and the footer
look like, and these widgets only redraw when something changed (`AnswerView.version`).
"""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import Static

from edge.cost import CostRecord, RunCost
from edge.ui.render import AnswerView, BlockCache, footer_figures, render_answer

REDRAW_SPACING = 6.0


class PromptItem(Static):
    """What the user asked (plain text: never parsed as markup or markdown)."""

    def __init__(self, prompt: str) -> None:
        super().__init__(Text(prompt), classes="prompt")
        self.prompt = prompt


class AnswerItem(Static):
    """One answer, SLM and LLM text in two colours with relay markers; redraws only on change."""

    def __init__(self, view: AnswerView | None = None) -> None:
        super().__init__("", classes="answer")
        self.view = view or AnswerView()
        self.updates = 0
        """How many times the answer was redrawn (tests check that streaming coalesces)."""
        self._cache = BlockCache()
        self._shown = -1
        self._last = 0.0

    def on_mount(self) -> None:
        self.refresh_view()

    def refresh_view(self, force: bool = False) -> None:
        """Redraw if the answer changed, but (unless forced) leave at least ~6 render times between
        redraws, so a very long answer cannot keep the UI thread busy more than about a third of
        the time."""
        if self.view.version == self._shown:
            return
        now = time.monotonic()
        if not force and now - self._last < REDRAW_SPACING * self._cache.render_s:
            return
        self._shown, self._last = self.view.version, now
        self.updates += 1
        self.update(render_answer(self.view, self._cache))
        self.set_class(not self.view.finish, "-streaming")

    def rendered(self) -> object:
        """The renderable currently shown (for tests)."""
        return render_answer(self.view, self._cache)


class NoticeItem(Static):
    """A message in the chat: a rejected prompt, a cloud failure, a replaced history file."""

    def __init__(self, message: str, severity: str = "information") -> None:
        super().__init__(Text(message), classes=f"notice -{severity}")
        self.message = message


class CostFooter(Static):
    """Live figures for the current answer and the conversation (see `render.FooterFigures`)."""

    def show(self, answer: CostRecord, chat: RunCost) -> None:
        self.figures = footer_figures(answer, chat)
        self.update(self.figures.text())

    def on_mount(self) -> None:
        self.show(CostRecord(), RunCost())
