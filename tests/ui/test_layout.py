"""The chat screen at three terminal sizes: snapshots (pytest-textual-snapshot) and the layout
rules behind them, with a scripted engine (no models).

Update the SVGs after an intended change: `pytest tests/ui/test_layout.py --snapshot-update`,
then look at them (`tests/ui/__snapshots__/`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input

from edge.ui.app import ChatApp
from edge.ui.widgets import AnswerItem, ChatView, CostFooter, PromptItem
from tests.fakes_ui import ScriptedEngine, math_relay_answer, script, wait_until

SIZES = [(80, 24), (120, 40), (200, 50)]


def chat_app(tmp_path: Path, answers: int = 2) -> ChatApp:
    engine = ScriptedEngine(*[script(math_relay_answer) for _ in range(answers)])
    return ChatApp(engine, history_path=tmp_path / "history.db", export_dir=tmp_path / "exports")


async def ask_all(pilot, questions: list[str]) -> None:  # type: ignore[no-untyped-def]
    app = pilot.app
    await wait_until(pilot, lambda: app.query_one(ChatView).size.height > 0)  # snap_compare: before first layout
    for question in questions:
        await pilot.click("#prompt")
        await pilot.press(*question)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.job is None and bool(app.query(AnswerItem)), timeout=5)
    app.query_one("#prompt", Input).cursor_blink = False  # a blinking cursor makes snapshots flaky
    await pilot.pause(0.2)


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_chat_screen_snapshot(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    async def two_questions(pilot) -> None:  # type: ignore[no-untyped-def]
        await ask_all(pilot, ["How many apples?", "And eaten?"])

    assert snap_compare(chat_app(tmp_path), terminal_size=size, run_before=two_questions)


def test_why_strip_snapshot(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def one_question_with_why(pilot) -> None:  # type: ignore[no-untyped-def]
        await ask_all(pilot, ["How many apples?"])
        await pilot.press("f4")

    assert snap_compare(chat_app(tmp_path, answers=1), terminal_size=(120, 40), run_before=one_question_with_why)


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
async def test_first_message_at_top_and_footer_on_one_line(tmp_path: Path, size: tuple[int, int]) -> None:
    app = chat_app(tmp_path)
    async with app.run_test(size=size) as pilot:
        await ask_all(pilot, ["How many apples?"])
        view = app.query_one(ChatView)
        prompt = app.query_one(PromptItem)
        assert prompt.region.y - view.region.y <= 2, "the first message starts at the top"
        footer = app.query_one(CostFooter)
        assert footer.region.height == 1
        line = footer.figures.text(footer.content_size.width)
        assert line.cell_len <= footer.content_size.width, "the footer shortens instead of wrapping"
        assert footer.figures.answer_usd in line.plain and "LLM" in line.plain


async def test_long_conversation_follows_the_newest_answer(tmp_path: Path) -> None:
    app = chat_app(tmp_path, answers=6)
    async with app.run_test(size=(80, 24)) as pilot:
        await ask_all(pilot, [f"Question {i}?" for i in range(6)])
        view = app.query_one(ChatView)
        assert view.max_scroll_y > 0 and view.scroll_y == view.max_scroll_y
        await pilot.press("ctrl+n")  # a new chat: short again, back at the top
        await pilot.pause(0.2)
        await ask_all(pilot, ["Once more?"])
        assert app.query_one(PromptItem).region.y - view.region.y <= 2
