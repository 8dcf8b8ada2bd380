"""The chat app under Pilot with a scripted engine: streaming, provenance colours, relay markers,
the cost footer, Esc, history, bad input. Plus the pure rendering it relies on.

No models and no network: `tests.fakes_ui.ScriptedEngine` yields fixed relay events from a thread
worker just as `RelayEngine` does. `wait_until` polls instead of trusting one `pause()`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import UserError
from edge.events import AnswerFinished, Notice, RelayFinished, RelayStarted, TokenEvent
from edge.relay.settings import RelaySettings
from edge.ui.app import ChatApp
from edge.ui.history import HistoryStore
from edge.ui.render import (
    LLM_COLOR,
    MARK_COLOR,
    SLM_COLOR,
    AnswerView,
    ProvenanceMarkdown,
    Span,
    chat_cost,
    markdown_source,
    split_blocks,
    split_edges,
    styled_runs,
)
from edge.ui.screens import HistoryScreen, SettingsScreen
from edge.ui.widgets import AnswerItem, CostFooter, NoticeItem, PromptItem
from tests.fakes_ui import LLM_SPAN, ScriptedEngine, relay_answer, script, slm_answer, wait_until

SIZE = (110, 40)
MARKER = "⟨cloud N=4 got 4 · 231 ms⟩"


def make_app(engine: ScriptedEngine, tmp_path: Path, **kw: object) -> ChatApp:
    return ChatApp(engine, history_path=tmp_path / "history.db", export_dir=tmp_path / "exports", **kw)


async def ask(pilot, app: ChatApp, question: str) -> None:  # type: ignore[no-untyped-def]
    await pilot.click("#prompt")
    await pilot.press(*question)
    await pilot.press("enter")


def colours_of(item: AnswerItem) -> dict[str, set[str | None]]:
    """Each rendered run of text -> the colours it was drawn in."""
    out: dict[str, set[str | None]] = {}
    for text, colour in styled_runs(item.rendered()):
        out.setdefault(text.strip(), set()).add(colour)
    return out


def footer_text(app: ChatApp) -> str:
    return app.query_one(CostFooter).figures.text().plain


# ---------------------------------------------------------------- streaming and provenance


async def test_question_streams_with_both_colours_and_relay_marker(tmp_path: Path) -> None:
    gated = script(gate_after=9)  # stop inside the LLM span: 4 SLM + 3 command + start + 1 LLM
    engine = ScriptedEngine(gated)
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, app, "What is 6*7?")
        await wait_until(pilot, lambda: app.query(AnswerItem) and "42" in str(colours_of(app.query_one(AnswerItem))))
        item = app.query_one(AnswerItem)
        assert app.job is not None and not item.view.finish  # still streaming
        assert item.has_class("-streaming")
        assert "⟨cloud N=4 …⟩" in colours_of(item)  # marker before the relay finished
        live = app.query_one(CostFooter).figures  # the footer follows the stream: 7 SLM tokens, 1 LLM
        assert (live.llm_share, live.relays) == ("12.5%", "1 relay")
        gated.gate.set()
        await wait_until(pilot, lambda: app.job is None)

        assert app.query_one(PromptItem).prompt == "What is 6*7?"
        runs = colours_of(item)
        assert runs["Let me think."] == {SLM_COLOR}
        assert runs["42"] == {LLM_COLOR}  # bold in markdown, LLM colour kept
        assert runs["is the answer."] == {LLM_COLOR}
        assert runs[MARKER] == {MARK_COLOR}
        assert not any("<call>" in text for text in runs)  # the command is replaced by the marker
        assert any("Done!" in text and SLM_COLOR in c for text, c in runs.items())
        assert not item.has_class("-streaming")
        # Coalesced: fewer redraws than events, more than one (it streamed).
        assert 1 < item.updates < len(engine.scripts[0].events)
        assert engine.calls[0]["messages"] == [{"role": "user", "content": "What is 6*7?"}]


async def test_footer_figures_equal_the_cost_record(tmp_path: Path) -> None:
    _, record, _ = relay_answer()
    app = make_app(ScriptedEngine(script()), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, app, "q")
        await wait_until(pilot, lambda: app.job is None and len(app.conversation.messages) == 2)
        figures = app.query_one(CostFooter).figures
        share = record.llm_tokens / (record.slm_tokens + record.llm_tokens) * 100
        assert figures.llm_share == f"{share:.1f}%"
        assert figures.relays == "1 relay"
        assert (figures.bytes_up, figures.bytes_down) == ("1.2 kB", "56 B")
        assert figures.edge_ms == f"{record.slm_prefill_ms + record.slm_decode_ms:.0f} ms"
        assert figures.cloud_ms == "120 ms"
        assert figures.answer_usd == f"${record.money:.6f}"
        assert figures.answer_llm_only_usd == f"${record.money_llm_only:.6f}"
        assert figures.chat_usd == f"${record.money:.6f}"
        text = footer_text(app)
        for value in (figures.llm_share, "↑1.2 kB ↓56 B", f"${record.money:.6f}", f"${record.money_llm_only:.6f}"):
            assert value in text

        await ask(pilot, app, "again")  # the conversation total adds the second answer
        await wait_until(pilot, lambda: app.job is None and len(app.conversation.messages) == 4)
        assert app.query_one(CostFooter).figures.chat_usd == f"${2 * record.money:.6f}"
        assert app.query_one(CostFooter).figures.chat_llm_only_usd == f"${2 * record.money_llm_only:.6f}"


async def test_cloud_state_in_header_and_offline_mid_answer(tmp_path: Path) -> None:
    engine = ScriptedEngine(script(offline_after=2), cloud_state="connected", cloud_address="cloud.example:50051")
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        assert app.sub_title.startswith("cloud: connected · cloud.example:50051")
        await ask(pilot, app, "q")
        await wait_until(pilot, lambda: app.job is None)
        assert "offline → SLM only" in app.sub_title
        assert "Cloud link" in app.last_message
        runs = colours_of(app.query_one(AnswerItem))
        assert any("cloud unavailable" in text for text in runs)


async def test_offline_at_start_is_said_and_shown(tmp_path: Path) -> None:
    engine = ScriptedEngine(script(slm_answer), cloud_state="offline", cloud_address=None)
    engine.cloud_note = "cloud.example:50051: connection refused"  # type: ignore[attr-defined]
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: bool(app.query(NoticeItem)))
        assert "connection refused" in app.query_one(NoticeItem).message
        assert app.sub_title.startswith("cloud: offline → SLM only")


# ---------------------------------------------------------------- cancel, failures, bad input


async def test_escape_cancels_and_the_app_stays_usable(tmp_path: Path) -> None:
    engine = ScriptedEngine(script(wait_for_cancel_after=3), script(slm_answer))
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, app, "long one")
        await wait_until(pilot, lambda: app.job is not None and app.job.item.view.slm_tokens == 3)
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.job is None)
        assert engine.calls[0]["cancel"].is_set()
        first = app.query_one(AnswerItem)
        assert first.view.finish == "cancelled"
        assert any("⟨cancelled⟩" in text for text in colours_of(first))
        assert app.conversation.messages[-1].status == "cancelled"

        await ask(pilot, app, "next")
        await wait_until(pilot, lambda: app.job is None and len(app.query(AnswerItem)) == 2)
        assert len(engine.calls[1]["messages"]) == 3  # the partial answer stays in the conversation
        assert "Plain SLM reply." in str(colours_of(app.query(AnswerItem).last()))


async def test_cloud_error_mid_answer_keeps_partial_answer(tmp_path: Path) -> None:
    engine = ScriptedEngine(script(raise_after=9), script(slm_answer))
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, app, "q")
        await wait_until(pilot, lambda: app.job is None)
        assert "cloud connection reset" in app.last_message
        assert app.query(NoticeItem).last().has_class("-error")
        item = app.query_one(AnswerItem)
        assert item.view.finish == "error"
        assert "Let me think." in colours_of(item)
        saved = HistoryStore(tmp_path / "history.db").load(app.conversation.id or 0)
        assert saved is not None and saved.messages[-1].status == "error"
        await ask(pilot, app, "still there?")
        await wait_until(pilot, lambda: app.job is None and len(app.conversation.messages) == 4)


async def test_cloud_refusing_auth_before_any_token_gives_the_prompt_back(tmp_path: Path) -> None:
    refused = script(raise_after=0, error=UserError("the cloud refused the API key (UNAUTHENTICATED)"))
    engine = ScriptedEngine(refused, script(slm_answer))
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, app, "hello")
        await wait_until(pilot, lambda: bool(app.query(NoticeItem)))
        assert "refused the API key" in app.query_one(NoticeItem).message
        assert app.query_one("#prompt").value == "hello"  # type: ignore[attr-defined]
        assert app.conversation.messages == [] and not app.query(AnswerItem)
        await pilot.press("enter")  # try again with the same text
        await wait_until(pilot, lambda: app.job is None and len(app.conversation.messages) == 2)


async def test_empty_prompt_is_refused_without_calling_the_engine(tmp_path: Path) -> None:
    engine = ScriptedEngine(script())
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, app, "   ")
        await pilot.pause()
        assert engine.calls == []
        assert app.last_message == "Type a question first."
        assert not app.query(PromptItem)


async def test_too_long_prompt_gives_the_text_back(tmp_path: Path) -> None:
    engine = ScriptedEngine(script(), max_context=10)
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        question = "word " * 12
        await ask(pilot, app, question)
        await wait_until(pilot, lambda: bool(app.query(NoticeItem)))
        assert engine.calls == []
        assert "context holds 10" in app.last_message
        assert app.query_one("#prompt").value == question.strip()  # type: ignore[attr-defined]
        assert not app.query(PromptItem) and not app.query(AnswerItem)
        assert app.conversation.messages == []


# ---------------------------------------------------------------- history, settings, palette


async def test_history_persists_and_reopens_with_the_same_spans(tmp_path: Path) -> None:
    app = make_app(ScriptedEngine(script()), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, app, "What is 6*7?")
        await wait_until(pilot, lambda: app.job is None and app.conversation.id is not None)
        spans = [s.to_dict() for s in app.query_one(AnswerItem).view.spans]

    again = make_app(ScriptedEngine(script(slm_answer)), tmp_path)
    async with again.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+h")
        await wait_until(pilot, lambda: isinstance(again.screen, HistoryScreen))
        assert "What is 6*7?" in str(again.screen.query_one("#history-list").get_option_at_index(0).prompt)
        await pilot.press("enter")
        await wait_until(pilot, lambda: bool(again.query(AnswerItem)))
        assert again.query_one(PromptItem).prompt == "What is 6*7?"
        reopened = again.query_one(AnswerItem)
        assert [s.to_dict() for s in reopened.view.spans] == spans
        assert colours_of(reopened)["42"] == {LLM_COLOR}
        assert MARKER in colours_of(reopened)
        _, record, _ = relay_answer()
        assert again.query_one(CostFooter).figures.answer_usd == f"${record.money:.6f}"

        await ask(pilot, again, "follow-up")  # continues the reopened conversation
        await wait_until(pilot, lambda: again.job is None and len(again.conversation.messages) == 4)
        assert [m["role"] for m in again.engine.calls[0]["messages"]] == ["user", "assistant", "user"]

        await pilot.press("ctrl+h")
        await wait_until(pilot, lambda: isinstance(again.screen, HistoryScreen))
        await pilot.press("d")
        await pilot.press("escape")
        await wait_until(pilot, lambda: not again.query(AnswerItem))
    assert HistoryStore(tmp_path / "history.db").list() == []


async def test_corrupt_history_is_replaced_and_the_app_works(tmp_path: Path) -> None:
    (tmp_path / "history.db").write_bytes(b"this is not sqlite" * 100)
    app = make_app(ScriptedEngine(script()), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: bool(app.query(NoticeItem)))
        assert "unreadable" in app.query_one(NoticeItem).message
        assert list(tmp_path.glob("history.db.corrupt-*"))
        await ask(pilot, app, "q")
        await wait_until(pilot, lambda: app.job is None and app.conversation.id is not None)
    assert len(HistoryStore(tmp_path / "history.db").list()) == 1


async def test_new_chat_export_and_runtime_settings(tmp_path: Path) -> None:
    engine = ScriptedEngine(script())
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for wanted in ("Policy: learned", "Policy: entropy", "Policy: never", "Policy: cloud-only", "History"):
            assert wanted in titles
        app.set_policy("entropy")
        assert "policy entropy" in app.sub_title

        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        app.screen.query_one("#max_relays").value = "2"  # type: ignore[attr-defined]
        app.screen.query_one("#budget_usd").value = "0.01"  # type: ignore[attr-defined]
        await pilot.click("#save")
        await wait_until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
        assert (app.settings.max_relays, app.settings.budget_usd, app.settings.policy) == (2, 0.01, "entropy")

        await ask(pilot, app, "q")
        await wait_until(pilot, lambda: app.job is None and app.conversation.id is not None)
        assert engine.calls[0]["settings"] == app.settings

        await pilot.press("ctrl+e")
        exported = list((tmp_path / "exports").glob("*.md"))
        assert len(exported) == 1 and str(exported[0]) in app.last_message
        text = exported[0].read_text()
        assert "[^1]" in text and "LLM text:" in text and "N=4 requested" in text

        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: not app.query(AnswerItem))
        assert app.conversation.messages == [] and footer_text(app).count("$0.000000") == 4
        await ask(pilot, app, "fresh")
        await wait_until(pilot, lambda: app.job is None and len(engine.calls) == 2)
        assert engine.calls[1]["messages"] == [{"role": "user", "content": "fresh"}]


async def test_settings_form_rejects_bad_values(tmp_path: Path) -> None:
    app = make_app(ScriptedEngine(script()), tmp_path, settings=RelaySettings(max_relays=3))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        app.screen.query_one("#entropy_tau").value = "2"  # type: ignore[attr-defined]
        await pilot.click("#save")
        await pilot.pause()
        assert isinstance(app.screen, SettingsScreen)
        assert "entropy_tau" in str(app.screen.query_one("#settings-error").render())
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
        assert app.settings.max_relays == 3


# ---------------------------------------------------------------- pure rendering


def view_of(*events: object) -> AnswerView:
    view = AnswerView()
    for event in events:
        view.feed(event)  # type: ignore[arg-type]
    return view


def test_markers_never_break_line_start_markdown() -> None:
    # Each case: an LLM span starting a line with block syntax keeps that syntax before the sentinel.
    assert split_edges("## Step 2", True) == ("## ", "Step 2", "")
    assert split_edges("\n- item\n", False) == ("\n- ", "item", "\n")
    assert split_edges("```python\nx = 1\n", True) == ("```python\n", "x = 1", "\n")
    assert split_edges("mid-word", False) == ("", "mid-word", "")  # not at a line start: nothing skipped
    assert split_edges("  \n", True) == ("  \n", "", "")


def test_blocks_split_outside_fences_only() -> None:
    assert split_blocks("a\n\nb") == ["a", "b"]
    assert split_blocks("```\nx\n\ny\n```\n\nz") == ["```\nx\n\ny\n```", "z"]


def test_llm_span_inside_a_list_and_code_keeps_colours() -> None:
    view = view_of(
        TokenEvent(1, "slm", "Steps:\n\n- one\n- "),
        RelayStarted(1, 8, 8, "command"),
        TokenEvent(2, "llm", "two\n\n```python\nx = 1\n"),
        RelayFinished(1, 2, "length", 10.0),
        TokenEvent(3, "slm", "```\n"),
        AnswerFinished("max_tokens"),
    )
    source = markdown_source(view.spans)
    assert "- \ue002⟨cloud N=8 got 2 · 10 ms⟩\ue003 \ue000two" in source
    runs = {text.strip(): colour for text, colour in styled_runs(ProvenanceMarkdown(source))}
    assert runs["one"] == SLM_COLOR and runs["two"] == LLM_COLOR and runs["x"] == LLM_COLOR
    assert runs["⟨stopped: answer token limit⟩"] == MARK_COLOR


def test_view_counts_tokens_and_notices() -> None:
    view = view_of(
        TokenEvent(1, "slm", "a"),
        TokenEvent(2, "slm", "", in_command=True),  # mid UTF-8 character: counted, no text
        Notice("budget_exhausted", "0.01 USD"),
        TokenEvent(3, "llm", "b"),
    )
    assert (view.slm_tokens, view.llm_tokens) == (2, 1)
    assert [s.kind for s in view.spans] == ["slm", "notice", "llm"]
    assert "⟨budget exhausted: 0.01 USD⟩" in markdown_source(view.spans)


def test_chat_cost_sums_records() -> None:
    _, record, _ = relay_answer()
    total = chat_cost([record, record])
    assert total.money == pytest.approx(2 * record.money) and total.relays == 2


def test_command_text_is_hidden_but_text_around_it_shown() -> None:
    spans = [Span("slm", "a "), Span("command", "x.<call>4</call>\n"), Span("llm", "".join(LLM_SPAN))]
    source = markdown_source(spans)
    assert "<call>" not in source and "x." in source


def test_cli_builds_config_from_flags_and_runs_the_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import argparse
    import contextlib
    import sys
    import types

    from edge.ui import cli

    seen: dict[str, object] = {}
    engine = ScriptedEngine(script())

    def load_edge_config(path: object, overrides: list[str]) -> object:
        seen.update(path=path, overrides=overrides)
        models = types.SimpleNamespace(cache_dir=tmp_path / "cache")
        return types.SimpleNamespace(relay=RelaySettings(policy="never"), history_path=None, models=models)

    @contextlib.contextmanager
    def open_engine(config: object, say: object = None, steps: object = None):  # type: ignore[no-untyped-def]
        seen.update(config=config, steps=steps)
        yield engine

    monkeypatch.setitem(sys.modules, "edge.config", types.SimpleNamespace(load_edge_config=load_edge_config))
    monkeypatch.setitem(sys.modules, "edge.app", types.SimpleNamespace(open_engine=open_engine))
    monkeypatch.setattr(ChatApp, "run", lambda self: seen.update(app=self))
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    flags = ["--cloud", "gpu.example:50051", "--set", "relay.max_n=8", "--history", str(tmp_path / "h.db")]
    args = parser.parse_args(["chat", *flags])
    assert args.func(args) == 0
    assert seen["overrides"] == ["relay.max_n=8", "cloud.address=gpu.example:50051"]
    app = seen["app"]
    assert isinstance(app, ChatApp) and app.engine is engine and app.settings.policy == "never"
    assert seen["steps"].log_path == tmp_path / "cache" / "logs" / "setup.log", "setup chatter goes to the cache's log"
    assert app.history_path == tmp_path / "h.db"
    args = parser.parse_args(["chat"])  # no flags: the embedded default, history in the user data dir
    assert args.func(args) == 0 and seen["overrides"] == []
    assert seen["app"].history_path == cli.default_history_path()  # type: ignore[attr-defined]


def test_scripted_engine_and_real_engine_share_the_chat_engine_protocol(tiny_onnx) -> None:
    """The UI's fake is held to the same typed Protocol as the real engine, member by member and
    signature by signature, so the fake cannot drift from what the app really gets."""
    import inspect

    from edge.relay.driver import AnswerStreamLike, ChatEngine, RelayEngine
    from edge.relay.settings import RelaySettings
    from edge.runtime import OnnxSlm
    from edge.vocab import Vocab
    from tests.fakes_ui import ScriptedEngine

    real = RelayEngine(OnnxSlm.load(tiny_onnx, provider="cpu", threads=1), Vocab.load(tiny_onnx), None)
    fake = ScriptedEngine(script())
    for engine in (real, fake):
        assert isinstance(engine, ChatEngine)
        assert isinstance(
            engine.answer([{"role": "user", "content": "hi"}], RelaySettings(max_new_tokens=2)), AnswerStreamLike
        )
    for name in ("answer", "count_tokens"):
        protocol = list(inspect.signature(getattr(ChatEngine, name)).parameters)
        assert list(inspect.signature(getattr(RelayEngine, name)).parameters) == protocol
        assert list(inspect.signature(getattr(ScriptedEngine, name)).parameters) == protocol
