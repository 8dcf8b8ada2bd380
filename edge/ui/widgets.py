"""Widgets of the chat view: the user's prompt, a streaming answer, inline notices, the cost footer.

They hold no logic about relays or money: `edge.ui.render` decides what an answer and the footer
look like, and these widgets only redraw when something changed (`AnswerView.version`).
"""

from __future__ import annotations

import time

from rich.text import Text
from textual.containers import VerticalScroll
from textual.geometry import Size
from textual.widgets import Static

from edge.cost import CostRecord, RunCost
from edge.ui.footer import footer_figures
from edge.ui.render import AnswerView, BlockCache, render_answer
from edge.ui.why import WhyStrip

REDRAW_SPACING = 6.0


class ChatView(VerticalScroll):
    """The conversation: messages from the top, following the newest text once they fill the view.

    Textual's anchor is only switched on while the content overflows: anchored, it scrolls to
    (content bottom − view height), which for a short conversation is negative and pushes the
    first messages down to the bottom of an empty screen.
    """

    def watch_virtual_size(self, size: Size) -> None:
        overflows = size.height > self.size.height
        if overflows and not self.is_anchored:
            self.anchor()
        elif not overflows and self.is_anchored:
            self.anchor(False)
            self._anchor_released = False  # a cleared chat follows its new answers again
            self.scroll_to(y=0, animate=False, immediate=True)


class PromptItem(Static):
    """What the user asked (plain text: never parsed as markup or markdown)."""

    def __init__(self, prompt: str) -> None:
        super().__init__(Text(prompt), classes="prompt")
        self.prompt = prompt


class AnswerItem(Static):
    """One answer, SLM and LLM text in two colours with relay markers; redraws only on change."""

    def __init__(self, view: AnswerView | None = None, number: int = 0) -> None:
        super().__init__("", classes="answer", id=f"answer-{number}")
        self.view = view or AnswerView()
        self.strip = WhyStrip(self.view.trace, f"answer-{number}")
        """Mounted right after the answer; shown with F4."""
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
        if self.strip.is_mounted:
            self.strip.redraw()

    def rendered(self) -> object:
        """The renderable currently shown (for tests)."""
        return render_answer(self.view, self._cache)


class NoticeItem(Static):
    """A message in the chat: a rejected prompt, a cloud failure, a replaced history file."""

    def __init__(self, message: str, severity: str = "information") -> None:
        super().__init__(Text(message), classes=f"notice -{severity}")
        self.message = message


class CostFooter(Static):
    """Live figures for the current answer and the conversation (see `footer.FooterFigures`), on
    one line that shortens to the terminal's width instead of wrapping."""

    def show(self, answer: CostRecord, chat: RunCost) -> None:
        self.figures = footer_figures(answer, chat)
        self._draw()

    def on_mount(self) -> None:
        self.show(CostRecord(), RunCost())

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        width = self.content_size.width or self.app.size.width - 4
        self.update(self.figures.text(width))
