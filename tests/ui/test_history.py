"""The SQLite history: round trips with provenance, deletion, corruption recovery, export."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge.events import AnswerFinished, Notice, RelayFinished, RelayStarted, TokenEvent
from edge.ui.history import (
    SCHEMA_VERSION,
    ChatMessage,
    Conversation,
    HistoryError,
    HistoryStore,
    export_markdown,
)
from edge.ui.render import AnswerView, record_from_dict
from tests.fakes_ui import relay_answer


def answered(question: str = "What is 6*7?") -> Conversation:
    events, record, text = relay_answer()
    view = AnswerView()
    for event in events:
        view.feed(event)
    return Conversation(
        title=question,
        messages=[
            ChatMessage("user", question),
            ChatMessage("assistant", text, view.spans, record.to_dict(), view.finish, {"policy": "learned"}),
        ],
    )


def test_round_trip_keeps_spans_cost_and_settings(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.db")
    conv = answered()
    store.save(conv)
    assert conv.id is not None and store.problem is None
    loaded = HistoryStore(tmp_path / "h.db").load(conv.id)
    assert loaded is not None
    assert [(m.role, m.content, m.status, m.settings) for m in loaded.messages] == [
        (m.role, m.content, m.status, m.settings) for m in conv.messages
    ]
    assert [s.to_dict() for s in loaded.messages[1].spans] == [s.to_dict() for s in conv.messages[1].spans]
    _, record, _ = relay_answer()
    assert record_from_dict(loaded.messages[1].cost or {}) == record


def test_saving_again_replaces_messages_and_lists_newest_first(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.db")
    first, second = answered("first"), answered("second")
    store.save(first)
    store.save(second)
    first.messages.append(ChatMessage("user", "more"))
    store.save(first)  # first is now the most recently updated
    listed = store.list()
    assert [(c.title, c.messages) for c in listed] == [("first", 3), ("second", 2)]
    store.delete(first.id or 0)
    assert [c.title for c in store.list()] == ["second"]
    assert store.conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 2  # cascade
    assert store.load(first.id or 0) is None


def test_corrupt_file_is_moved_aside_and_a_fresh_db_started(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    path.write_bytes(b"\x00garbage" * 500)
    store = HistoryStore(path)
    problem = store.take_problem()
    assert problem is not None and "moved it to h.db.corrupt-" in problem
    assert store.take_problem() is None  # shown once
    aside = list(tmp_path.glob("h.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"\x00garbage")
    store.save(answered())
    assert len(store.list()) == 1


class _BreaksOnce:
    """A connection that reports corruption on its first statement (the file broke mid-session)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._broken = True

    def execute(self, *args: Any) -> Any:
        if self._broken:
            self._broken = False
            raise sqlite3.DatabaseError("database disk image is malformed")
        return self._conn.execute(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __enter__(self) -> Any:
        return self._conn.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._conn.__exit__(*exc)


def test_corruption_mid_session_saves_the_conversation_into_a_fresh_file(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.db")
    conv = answered()
    store.save(conv)
    old_id = conv.id
    store.conn = _BreaksOnce(store.conn)  # type: ignore[assignment]
    conv.messages.append(ChatMessage("user", "and then?"))
    store.save(conv)
    assert "unreadable" in (store.take_problem() or "")
    assert list(tmp_path.glob("h.db.corrupt-*"))
    fresh = HistoryStore(tmp_path / "h.db")
    assert [c.messages for c in fresh.list()] == [3]  # the whole conversation, not just the last turn
    assert conv.id is not None and old_id is not None


def test_operational_errors_are_reported_not_treated_as_corruption(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.db")
    store.conn.close()  # a closed connection raises ProgrammingError, a DatabaseError subclass
    with pytest.raises(HistoryError):
        store.list()
    assert not list(tmp_path.glob("h.db.corrupt-*"))


def test_newer_schema_is_left_alone_and_history_is_temporary(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    HistoryStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    store = HistoryStore(path)
    assert "newer than this app" in (store.take_problem() or "")
    store.save(answered())
    assert len(store.list()) == 1
    assert HistoryStore(path).list() == []  # the file was not touched


def test_export_marks_every_llm_span_with_its_relay() -> None:
    conv = answered()
    conv.messages[1].spans[-1].text += " `tick`"  # backticks in SLM text survive
    text = export_markdown(conv)
    assert text.startswith("# What is 6*7?")
    assert "## You\n\nWhat is 6*7?" in text
    assert "Let me think. [^1]**42** is the answer. Done! `tick`" in text
    assert "<call>" not in text.split("---")[0]  # the command is not in the body
    assert "[^1]: Cloud relay 1 (command): N=4 requested, 4 granted, 4 received in 231 ms" in text
    assert 'LLM text: `" **42** is the answer."`' in text
    assert "<sub>LLM 30.8% · 1 relay · ↑1.2 kB ↓56 B" in text


def test_export_numbers_footnotes_across_answers() -> None:
    conv = answered()
    conv.messages += answered().messages
    text = export_markdown(conv)
    assert "[^1]:" in text and "[^2]:" in text and text.count("[^2]") == 2


def test_export_of_a_failed_relay_still_references_its_footnote() -> None:
    view = AnswerView()
    for event in (
        TokenEvent(1, "slm", "So"),
        TokenEvent(2, "slm", "<call>8</call>", in_command=True),
        RelayStarted(1, 8, 8, "command"),
        RelayFinished(1, 0, "error", 0.0),
        Notice("cloud_unavailable", "connection refused"),
        TokenEvent(3, "slm", "\n- then alone"),
        AnswerFinished("cancelled"),
    ):
        view.feed(event)
    conv = Conversation(title="t", messages=[ChatMessage("user", "q"), ChatMessage("assistant", "", view.spans)])
    text = export_markdown(conv)
    # The list item keeps its bullet: the reference and the notice go after "- ".
    assert "So\n- [^1] *⟨cloud unavailable → SLM only: connection refused⟩* then alone *⟨cancelled⟩*" in text
    assert (
        '[^1]: Cloud relay 1 (command): N=8 requested, 8 granted, 0 received in 0 ms (finish: error). LLM text: `""`'
        in text
    )
