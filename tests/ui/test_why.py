"""The "why" strip: confidence along the answer, relay markers that open a relay's details, and the
same data in history and the markdown export. Pilot with a scripted engine (no models)."""

from __future__ import annotations

from pathlib import Path

from edge.events import RelayStarted, TokenEvent
from edge.trace import AnswerTrace, sparkline
from edge.ui.app import ChatApp
from edge.ui.history import HistoryStore, export_markdown
from edge.ui.why import RelayDetailsScreen, WhyStrip
from edge.ui.widgets import AnswerItem, ChatView
from tests.fakes_ui import COMMAND, MATH_SLM_BEFORE, ScriptedEngine, math_relay_answer, script, wait_until
from tests.ui.test_layout import ask_all


async def test_f4_shows_the_strip_and_a_marker_opens_the_relay_details(tmp_path: Path) -> None:
    app = ChatApp(ScriptedEngine(script(math_relay_answer)), history_path=tmp_path / "h.db", export_dir=tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await ask_all(pilot, ["How many apples?"])
        strip = app.query_one(WhyStrip)
        assert not strip.display, "hidden until F4"
        await pilot.press("f4")
        await pilot.pause(0.1)
        assert strip.display and app.query_one(ChatView).has_class("-why")
        lines = strip.render().plain.splitlines()  # type: ignore[union-attr]
        assert "▁" in lines[0], "the unsure token (p=0.1) shows as the lowest block"
        column = lines[1].index("▲1")
        await pilot.click(WhyStrip, offset=(column + 2, 1))  # border + padding: 2 cells
        await wait_until(pilot, lambda: isinstance(app.screen, RelayDetailsScreen))
        shown = " ".join(str(w.render()) for w in app.screen.query(".relay-row"))
        for expected in (
            "the SLM's own <call>",
            "N requested",
            "412 ms",
            "1.2 kB / 56 B",
            "20 / 0 / 4 tokens",
            "$0.000",
        ):
            assert expected in shown, expected
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, RelayDetailsScreen))
        await pilot.press("f4")
        await pilot.pause(0.1)
        assert not strip.display


async def test_trace_is_saved_reopened_and_exported(tmp_path: Path) -> None:
    app = ChatApp(ScriptedEngine(script(math_relay_answer)), history_path=tmp_path / "h.db", export_dir=tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await ask_all(pilot, ["How many apples?"])
        conv_id = app.conversation.id
    store = HistoryStore(tmp_path / "h.db")
    conv = store.load(conv_id)
    store.close()
    trace = AnswerTrace.from_dict(conv.messages[1].trace)
    assert (
        trace.relays[0].at_token == len(MATH_SLM_BEFORE) + len(COMMAND)
        and trace.relays[0].cost["cloud_prompt_tokens"] == 20
    )
    assert trace.lowest() == (8, 0.1)
    exported = export_markdown(conv)
    assert "why: SLM confidence" in exported and "least sure: token 8 at p=0.10" in exported
    assert "relay 1: trigger the SLM's own <call>" in exported and "\\times" in exported, "raw text kept"
    again = ChatApp(ScriptedEngine(script(math_relay_answer)), history_path=tmp_path / "h.db", export_dir=tmp_path)
    async with again.run_test(size=(120, 40)) as pilot:
        await again._show_conversation(conv)
        await pilot.press("f4")
        await pilot.pause(0.1)
        assert "▲1" in again.query_one(WhyStrip).render().plain  # type: ignore[union-attr]
        assert again.query_one(AnswerItem).view.trace.relays[0].cost["money"] > 0


def test_sparkline_buckets_take_the_lowest_confidence_and_mark_relays() -> None:
    trace = AnswerTrace()
    for i in range(10):
        trace.feed(TokenEvent(i, "slm", "x", confidence=0.05 if i == 3 else 0.99))
        if i == 5:
            trace.feed(RelayStarted(1, 4, 4, "command"))
            for j in range(4):
                trace.feed(TokenEvent(100 + j, "llm", "y"))
    cells = sparkline(trace, 7)
    assert len(cells) == 7 and cells[1].char == "▁" and cells[0].char == "█"
    assert [c.relay for c in cells].count(1) == 1 and any(c.char == "▔" and c.source == "llm" for c in cells)
    assert len(sparkline(trace, 500)) == 14, "never more cells than tokens"
