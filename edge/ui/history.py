"""Conversation history in SQLite, with the provenance of every span, and export to markdown.

Why spans and not just text: the point of this app is showing which model wrote what and what it
cost, so a reopened or exported conversation must show the same SLM/LLM spans, relay markers and
cost figures as the live one. Each assistant message keeps its spans (kind, text, meta JSON) and
its priced `CostRecord` as JSON; `content` is the text the engine gets back as context next turn.

Why the store never raises on a broken file: history is a convenience, the conversation on screen
is what matters. A file that is not a readable database (or fails `PRAGMA quick_check`) is moved
aside to `<name>.corrupt-<timestamp>` and a fresh database is started; the reason is left in
`problem` for the app to show. `save` writes a whole conversation in one transaction, so after a
mid-session corruption the app's in-memory conversation is simply saved again into the new file.
Operational errors (locked, disk full) are not corruption: they become `HistoryError` and the file
is left alone.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge.trace import AnswerTrace, sparkline
from edge.ui.footer import footer_figures
from edge.ui.render import (
    Span,
    chat_cost,
    json_quote,
    marker_text,
    record_from_dict,
    split_edges,
    visible_text,
)
from edge.ui.why import relay_rows

SCHEMA_VERSION = 2
"""2 added messages.trace_json (the "why" data); a version-1 file gains the column on open."""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT '',
    cost_json TEXT,
    settings_json TEXT,
    created REAL NOT NULL,
    trace_json TEXT
);
CREATE TABLE IF NOT EXISTS spans (
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    meta_json TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (message_id, position)
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, position);
"""


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring an older file up to SCHEMA_VERSION in place (its conversations are kept)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    with conn:
        if "trace_json" not in columns:
            conn.execute("ALTER TABLE messages ADD COLUMN trace_json TEXT")
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))


class HistoryError(Exception):
    """History could not be read or written (not corruption: locked, disk full, ...)."""


@dataclass
class ChatMessage:
    role: Literal["user", "assistant"]
    content: str
    """What the engine sees as context on later turns (the SLM's text for assistant turns)."""
    spans: list[Span] = field(default_factory=list)
    cost: dict[str, Any] | None = None
    """`CostRecord.to_dict()` of an assistant answer."""
    status: str = ""
    """How an assistant answer ended: AnswerFinished.reason, or "error"."""
    settings: dict[str, Any] | None = None
    """The RelaySettings the answer ran with."""
    created: float = field(default_factory=time.time)
    trace: dict[str, Any] | None = None
    """`AnswerTrace.to_dict()`: confidence along the answer and each relay's details."""


@dataclass
class Conversation:
    id: int | None = None
    title: str = ""
    messages: list[ChatMessage] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    def engine_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


@dataclass(frozen=True)
class ConversationSummary:
    id: int
    title: str
    updated: float
    messages: int


class HistoryStore:
    """SQLite history; use from one thread (the app's)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.problem: str | None = None
        """Why the file was replaced (or history is temporary); the app shows it once."""
        self.conn = self._open()

    # ------------------------------------------------------------ opening and recovery

    def _connect(self, target: str | Path) -> sqlite3.Connection:
        conn = sqlite3.connect(target)
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check}")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            if row[0] is None:
                conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
                conn.commit()
            elif row[0] > SCHEMA_VERSION:
                raise HistoryError(f"schema version {row[0]} is newer than this app ({SCHEMA_VERSION})")
            elif row[0] < SCHEMA_VERSION:
                _migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._connect(self.path)
        except sqlite3.DatabaseError as exc:
            if type(exc) is sqlite3.DatabaseError:  # corrupt or not a database; locked etc. are subclasses
                return self._replace(exc)
            reason = exc
        except (HistoryError, OSError) as exc:
            reason = exc
        self.problem = f"History {self.path} not used ({reason}); this session's history is temporary."
        return self._connect(":memory:")

    def _replace(self, exc: Exception) -> sqlite3.Connection:
        moved = self._move_aside()
        self.problem = (
            f"History database {self.path} was unreadable ({exc}); moved it to {moved.name} and started a fresh one."
        )
        return self._connect(self.path)

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        self.path.rename(target)
        for suffix in ("-journal", "-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.rename(target.with_name(target.name + suffix))
        return target

    def _run(self, op: Any) -> Any:
        """Run `op(conn)`; on corruption replace the file and run it once more."""
        try:
            return op(self.conn)
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:
                raise HistoryError(f"history {self.path}: {exc}") from exc
            self.conn.close()
            self.conn = self._replace(exc)
            return op(self.conn)

    def take_problem(self) -> str | None:
        problem, self.problem = self.problem, None
        return problem

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------ conversations

    def save(self, conversation: Conversation) -> None:
        """Write the whole conversation (assigns `conversation.id` on first save)."""

        def op(conn: sqlite3.Connection) -> None:
            with conn:
                self._write(conn, conversation)

        self._run(op)  # after a replaced file the id is unknown there, so `_write` inserts afresh

    def _write(self, conn: sqlite3.Connection, conv: Conversation) -> None:
        now = time.time()
        exists = conv.id is not None and conn.execute("SELECT 1 FROM conversations WHERE id = ?", (conv.id,)).fetchone()
        if exists:
            conn.execute("UPDATE conversations SET title = ?, updated = ? WHERE id = ?", (conv.title, now, conv.id))
            conn.execute("DELETE FROM messages WHERE conversation_id = ?", (conv.id,))
        else:
            cur = conn.execute(
                "INSERT INTO conversations (title, created, updated) VALUES (?, ?, ?)",
                (conv.title, conv.created, now),
            )
            conv.id = cur.lastrowid
        for position, msg in enumerate(conv.messages):
            self._write_message(conn, conv.id, position, msg)

    @staticmethod
    def _write_message(conn: sqlite3.Connection, conv_id: int | None, pos: int, msg: ChatMessage) -> None:
        cur = conn.execute(
            "INSERT INTO messages (conversation_id, position, role, content, status, cost_json,"
            " settings_json, created, trace_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                conv_id,
                pos,
                msg.role,
                msg.content,
                msg.status,
                None if msg.cost is None else json.dumps(msg.cost),
                None if msg.settings is None else json.dumps(msg.settings),
                msg.created,
                None if msg.trace is None else json.dumps(msg.trace),
            ),
        )
        conn.executemany(
            "INSERT INTO spans (message_id, position, kind, text, meta_json) VALUES (?, ?, ?, ?, ?)",
            [(cur.lastrowid, i, s.kind, s.text, json.dumps(s.meta)) for i, s in enumerate(msg.spans)],
        )

    def list(self) -> list[ConversationSummary]:
        """Conversations, most recently updated first."""
        sql = (
            "SELECT c.id, c.title, c.updated, count(m.id) FROM conversations c"
            " LEFT JOIN messages m ON m.conversation_id = c.id"
            " GROUP BY c.id ORDER BY c.updated DESC, c.id DESC"
        )
        rows = self._run(lambda conn: conn.execute(sql).fetchall())
        return [ConversationSummary(*row) for row in rows]

    def load(self, conversation_id: int) -> Conversation | None:
        return self._run(lambda conn: self._read(conn, conversation_id))

    @staticmethod
    def _read(conn: sqlite3.Connection, conversation_id: int) -> Conversation | None:
        sql = "SELECT title, created FROM conversations WHERE id = ?"
        row = conn.execute(sql, (conversation_id,)).fetchone()
        if row is None:
            return None
        conv = Conversation(id=conversation_id, title=row[0], created=row[1])
        messages = conn.execute(
            "SELECT id, role, content, status, cost_json, settings_json, created, trace_json FROM messages"
            " WHERE conversation_id = ? ORDER BY position",
            (conversation_id,),
        ).fetchall()
        for msg_id, role, content, status, cost, settings, created, trace in messages:
            spans = conn.execute(
                "SELECT kind, text, meta_json FROM spans WHERE message_id = ? ORDER BY position", (msg_id,)
            ).fetchall()
            conv.messages.append(
                ChatMessage(
                    role=role,
                    content=content,
                    spans=[Span(kind, text, json.loads(meta)) for kind, text, meta in spans],
                    cost=None if cost is None else json.loads(cost),
                    status=status,
                    settings=None if settings is None else json.loads(settings),
                    created=created,
                    trace=None if trace is None else json.loads(trace),
                )
            )
        return conv

    def delete(self, conversation_id: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

        self._run(op)


# ---------------------------------------------------------------- export


def export_markdown(conv: Conversation) -> str:
    """The conversation as markdown with provenance.

    SLM text is plain. Each span the cloud LLM wrote starts with a footnote reference; the footnote
    gives the relay's figures (N requested and granted, tokens received, round trip, finish) and
    quotes the LLM's exact text, so every span's author can be read back. Notices are inline.
    """
    lines = [f"# {conv.title or 'Conversation'}", ""]
    lines.append(
        "_Exported from RelayLLM. Plain text was written by the small model on the device; "
        "text starting at a footnote mark `[^n]` was written by the cloud LLM (quoted in the footnote)._"
    )
    notes: list[str] = []
    for msg in conv.messages:
        if msg.role == "user":
            lines += ["", "## You", "", msg.content]
            continue
        body, new_notes = _answer_markdown(msg.spans, first_note=len(notes) + 1)
        notes += new_notes
        lines += ["", "## Assistant", "", body]
        if msg.cost is not None:
            lines += ["", _cost_line(msg.cost)]
        if msg.trace:
            lines += ["", _why_line(AnswerTrace.from_dict(msg.trace))]
    if notes:
        lines += ["", "---", "", *notes]
    return "\n".join(lines) + "\n"


def _answer_markdown(spans: list[Span], first_note: int) -> tuple[str, list[str]]:
    """One answer's body (footnote refs and notices placed like the app's markers) and its footnotes."""
    out: list[str] = []
    pending: list[str] = []
    relays: list[tuple[Span, list[str]]] = []  # each relay with the LLM text that followed it
    for span in spans:
        if span.kind == "relay":
            relays.append((span, []))
            pending.append(f"[^{first_note + len(relays) - 1}]")
            continue
        if span.kind in ("notice", "end"):
            pending.append(f" *{marker_text(span)}* ")
            continue
        if span.kind == "llm" and relays:
            relays[-1][1].append(span.text)
        text = visible_text(span)
        lead, body, trail = split_edges(text, not out or out[-1].endswith("\n"))
        if body and pending:
            text = lead + "".join(pending) + body + trail
            pending.clear()
        out.append(text)
    out += pending
    notes = [
        f"[^{first_note + i}]: {_relay_note(span)} LLM text: {_code_span(json_quote(''.join(texts)))}"
        for i, (span, texts) in enumerate(relays)
    ]
    return "".join(out).strip(), notes


def _relay_note(span: Span) -> str:
    m = span.meta
    return (
        f"Cloud relay {m.get('index', '?')} ({m.get('trigger', 'command')}): "
        f"N={m.get('n_requested', '?')} requested, {m.get('n_granted', '?')} granted, "
        f"{m.get('tokens_received', 0)} received in {m.get('round_trip_ms', 0.0):.0f} ms "
        f"(finish: {m.get('finish', '?')})."
    )


def _cost_line(cost: dict[str, Any]) -> str:
    record = record_from_dict(cost)
    f = footer_figures(record, chat_cost([record]))
    return (
        f"<sub>LLM {f.llm_share} · {f.relays} · ↑{f.bytes_up} ↓{f.bytes_down} · edge {f.edge_ms} · "
        f"cloud {f.cloud_ms} · {f.answer_usd} (LLM-only {f.answer_llm_only_usd})</sub>"
    )


def _why_line(trace: AnswerTrace) -> str:
    """The "why" strip in words: the confidence sparkline and each relay's details."""
    spark = "".join(cell.char for cell in sparkline(trace, 80))
    low = trace.lowest()
    parts = [f"why: SLM confidence {_code_span(spark)} (▁ unsure … █ sure, ▔ cloud)"]
    if low is not None:
        parts.append(f"least sure: token {low[0]} at p={low[1]:.2f}")
    for mark in trace.relays:
        parts.append(f"relay {mark.index}: " + ", ".join(f"{k} {v}" for k, v in relay_rows(mark)))
    return "<sub>" + " · ".join(parts) + "</sub>"


def _code_span(text: str) -> str:
    """Inline code that survives backticks inside `text`."""
    run = max((len(r) for r in re.findall("`+", text)), default=0)
    fence = "`" * (run + 1)
    return f"{fence} {text} {fence}" if run else f"`{text}`"
