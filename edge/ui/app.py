"""The chat app: the SLM answers here, the cloud LLM writes the spans it asks for, and you see both.

Rendering decision. Textual's `Markdown.get_stream` coalesces appends nicely but cannot colour text
by provenance, and a colour per span is the point of this app. So an answer is one Rich markdown
document with private-use sentinels around LLM text and relay markers (`edge.ui.render`): Rich
renders it, and the sentinels are swapped for two colours (SLM, LLM) and a marker style. The same
rendering is used while streaming and after, so the final view keeps both colours, markdown
included. Cost stays bounded: the document is cut into blocks whose rendered lines are cached, so
only the last block is parsed again, and the view is redrawn at most 20 times a second.

Threading. `RelayEngine.answer` is a blocking generator (onnxruntime, gRPC), so it runs in a thread
worker (`@work(thread=True, exclusive=True)`). The worker never waits for the UI: it appends events
to the job's deque and, now and then, a copy of the engine's cost record; a 20 Hz timer on the UI
side drains the deque into the `AnswerView` (this is the coalescing: many tokens, one redraw).
When the stream ends the worker posts `AnswerEnded`. Esc sets the job's cancel Event; the engine
stops at the next token and the partial answer is kept, marked cancelled, and saved.

Failures never cost the conversation: an empty or too-long prompt is refused before the engine
runs (the prompt goes back into the input), a cloud failure mid-answer keeps the partial answer
with an error marker, and a broken history file is replaced while the conversation on screen is
saved again (`edge.ui.history`).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Header, Input
from textual.worker import Worker, get_current_worker

from common.errors import UserError
from edge.cost import CostRecord, PriceTable
from edge.events import Notice, RelayEvent, RelayFinished
from edge.relay.driver import ChatEngine
from edge.relay.settings import POLICIES, RelaySettings
from edge.trace import AnswerTrace
from edge.ui.history import ChatMessage, Conversation, HistoryError, HistoryStore, export_markdown
from edge.ui.render import AnswerView, chat_cost, cloud_state_text, live_record, record_from_dict
from edge.ui.screens import HistoryScreen, SettingsScreen
from edge.ui.why import RelayDetailsScreen
from edge.ui.widgets import AnswerItem, ChatView, CostFooter, NoticeItem, PromptItem

log = logging.getLogger(__name__)
T = TypeVar("T")

POLICY_HELP = {
    "learned": "The SLM calls the cloud with its own <call>N</call> commands (RelayLLM)",
    "head": "Call the cloud for fixed N tokens where the learned call head expects the LLM to disagree",
    "entropy": "Call the cloud for fixed N tokens when the SLM is unsure (top-1 prob. below τ)",
    "random": "Call the cloud at random (a baseline)",
    "never": "SLM alone: no cloud calls",
    "cloud-only": "The cloud LLM writes the whole answer",
}
SNAPSHOT_EVERY_S = 0.25


@dataclass
class AnswerJob:
    """One answer in flight, shared by the worker thread (writes) and the UI (drains)."""

    messages: list[dict[str, str]]
    settings: RelaySettings
    item: AnswerItem
    prompt: str
    cancel: threading.Event = field(default_factory=threading.Event)
    events: deque[RelayEvent] = field(default_factory=deque)
    snapshot: CostRecord | None = None
    """Latest copy of the engine's (partial) cost record, replaced atomically by the worker."""


@dataclass
class Outcome:
    record: CostRecord | None = None
    text: str = ""
    error: str = ""
    rejected: bool = False
    """Refused before anything was generated: the prompt is given back to the user."""


class AnswerEnded(Message):
    """The worker's stream ended (finished, cancelled, or failed)."""

    def __init__(self, job: AnswerJob, outcome: Outcome) -> None:
        super().__init__()
        self.job = job
        self.outcome = outcome


def run_answer(engine: Any, job: AnswerJob, worker: Worker[Any] | None = None) -> Outcome:
    """Run one answer to the end in the calling (worker) thread, feeding `job.events`."""
    stream: Any = None
    received = 0
    try:
        tokens = engine.count_tokens(job.messages)
        if tokens + 1 >= engine.max_context:  # room for at least one answer token
            return Outcome(error=_too_long(tokens, engine.max_context), rejected=True)
        stream = engine.answer(job.messages, job.settings, job.cancel)
        last = 0.0
        for event in stream:
            job.events.append(event)
            received += 1
            if worker is not None and worker.is_cancelled:
                job.cancel.set()
            if isinstance(event, RelayFinished) or time.monotonic() - last > SNAPSHOT_EVERY_S:
                job.snapshot, last = _snapshot(engine, stream), time.monotonic()
    except UserError as exc:
        return Outcome(record=_snapshot(engine, stream), error=str(exc), rejected=received == 0)
    except Exception as exc:  # the cloud vanished, a model step failed: keep what was written
        log.debug("answer failed", exc_info=True)  # not to stderr: it would scribble over the screen
        error = f"{type(exc).__name__}: {exc}"
        return Outcome(record=_snapshot(engine, stream), text=_text(stream), error=error, rejected=received == 0)
    return Outcome(record=stream.record, text=stream.text)


def _too_long(tokens: int, limit: int) -> str:
    return (
        f"This prompt needs {tokens} tokens with the conversation so far; the model's context holds {limit}. "
        "Shorten it, or start a new chat with Ctrl+N."
    )


def _snapshot(engine: Any, stream: Any) -> CostRecord | None:
    record = getattr(stream, "record", None)
    if not isinstance(record, CostRecord):
        return None
    record = copy.deepcopy(record)
    prices = getattr(engine, "prices", None)
    if isinstance(prices, PriceTable) and not record.money:
        record.price(prices)
    return record


def _text(stream: Any) -> str:
    text = getattr(stream, "text", "")
    return text if isinstance(text, str) else ""


class ChatApp(App[None]):
    """Terminal chat over a `RelayEngine` (or anything with the same surface, e.g. the tests' fake)."""

    CSS_PATH = "chat.tcss"
    TITLE = "RelayLLM"
    BINDINGS = [
        Binding("escape", "cancel_answer", "Cancel"),
        Binding("ctrl+n", "new_chat", "New chat"),
        Binding("ctrl+h,f3", "history", "History"),
        Binding("ctrl+e", "export", "Export", priority=True),  # over Input's ctrl+e (End still works)
        Binding("f2", "settings", "Settings"),
        Binding("f4", "toggle_why", "Why"),
    ]

    def __init__(
        self,
        engine: ChatEngine,
        settings: RelaySettings | None = None,
        history_path: str | Path = "history.db",
        export_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.settings = settings or RelaySettings()
        self.history_path = Path(history_path)
        self.export_dir = Path(export_dir) if export_dir else self.history_path.parent / "exports"
        self.store: HistoryStore | None = None
        self.conversation = Conversation()
        self.job: AnswerJob | None = None
        self.last_message = ""
        """The last message shown to the user (toast or inline)."""
        self._records: list[CostRecord] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield ChatView(id="chat-view")
        yield Input(placeholder="Ask something · Enter send · Esc cancel · Ctrl+P commands", id="prompt")
        yield CostFooter(id="cost")
        yield Footer()

    def on_mount(self) -> None:
        self._ticker = self.set_interval(1 / 20, self._drain, pause=True)
        self.store = HistoryStore(self.history_path)
        self._history_problem()
        self._update_link()
        note = getattr(self.engine, "cloud_note", "")
        if self.engine.cloud_state == "offline" and note:
            self.say(f"Cloud offline ({note}); answers come from the SLM alone.", "warning")
        self.query_one("#prompt", Input).focus()

    def on_unmount(self) -> None:
        if self.job is not None:
            self.job.cancel.set()
        if self.store is not None:
            self.store.close()

    # ------------------------------------------------------------ asking

    @on(Input.Submitted, "#prompt")
    async def _submitted(self, event: Input.Submitted) -> None:
        prompt = event.value.strip()
        if not prompt:
            self.say("Type a question first.", "warning", inline=False)
            return
        if self.job is not None:
            self.say("An answer is still running; Esc cancels it.", "warning", inline=False)
            return
        event.input.clear()
        self.conversation.messages.append(ChatMessage("user", prompt))
        self.conversation.title = self.conversation.title or prompt[:60]
        item = AnswerItem(number=len(self.conversation.messages))
        await self.query_one("#chat-view", VerticalScroll).mount_all([PromptItem(prompt), item, item.strip])
        self.job = AnswerJob(self.conversation.engine_messages(), self.settings, item, prompt)
        self._ticker.resume()
        self._answer(self.job)

    @work(thread=True, exclusive=True, group="answer")
    def _answer(self, job: AnswerJob) -> None:
        self.post_message(AnswerEnded(job, run_answer(self.engine, job, get_current_worker())))

    def _drain(self) -> None:
        """Feed what the worker produced since the last tick into the view: one redraw per tick."""
        job = self.job
        if job is None:
            return
        fed = bool(job.events)
        while job.events:
            event = job.events.popleft()
            job.item.view.feed(event)
            if isinstance(event, Notice):
                self._notice(event)
        job.item.refresh_view()  # also catches up a redraw deferred on an earlier tick
        if fed:
            self._show_cost(live_record(job.item.view, job.snapshot), live=True)

    def _notice(self, notice: Notice) -> None:
        if notice.kind in ("cloud_unavailable", "cloud_error"):
            self._update_link()
            self.say(f"Cloud link: {notice.detail or notice.kind}; the SLM continues alone.", "warning", inline=False)

    @on(AnswerEnded)
    async def _ended(self, message: AnswerEnded) -> None:
        job, outcome = message.job, message.outcome
        self._drain()
        self._ticker.pause()
        self.job = None
        self._update_link()
        if outcome.rejected:
            await self._reject(job, outcome.error)
            return
        view = job.item.view
        if outcome.error:
            view.end("error", outcome.error)
            self.say(f"The answer stopped: {outcome.error}. The conversation so far is kept.", "error")
        view.end("eos")
        job.item.refresh_view(force=True)
        record = outcome.record or live_record(view, job.snapshot)
        view.trace.with_costs(record.relays)
        job.item.strip.redraw()
        text = outcome.text or "".join(s.text for s in view.spans if s.kind in ("slm", "llm", "command"))
        answer = ChatMessage("assistant", text, view.spans, record.to_dict(), view.finish, job.settings.model_dump())
        answer.trace = view.trace.to_dict()
        self.conversation.messages.append(answer)
        self._records.append(record)
        self._save()
        self._show_cost(record)

    async def _reject(self, job: AnswerJob, error: str) -> None:
        """The engine refused the prompt: take the turn back, give the text back, say why."""
        self.conversation.messages.pop()
        if not self.conversation.messages:
            self.conversation.title = ""
        chat = self.query_one("#chat-view", VerticalScroll)
        await chat.remove_children([chat.query(PromptItem).last(), job.item, job.item.strip])
        self.query_one("#prompt", Input).value = job.prompt
        self.say(error, "error")

    def action_cancel_answer(self) -> None:
        if self.job is not None:
            self.job.cancel.set()

    # ------------------------------------------------------------ conversations

    async def action_new_chat(self) -> None:
        if self._busy():
            return
        await self._show_conversation(Conversation())

    def action_history(self) -> None:
        if self._busy():
            return
        listed = self._history(lambda store: store.list())
        if listed is not None:
            self.push_screen(HistoryScreen(listed, self._delete), self._reopen)

    async def _reopen(self, conversation_id: int | None) -> None:
        if conversation_id is None:
            return
        conv = self._history(lambda store: store.load(conversation_id))
        if conv is None:
            self.say("That conversation could not be opened.", "warning")
            return
        await self._show_conversation(conv)

    def _delete(self, conversation_id: int) -> None:
        self._history(lambda store: store.delete(conversation_id))
        if self.conversation.id == conversation_id:
            self.call_after_refresh(self._show_conversation, Conversation())

    async def _show_conversation(self, conv: Conversation) -> None:
        self.conversation = conv
        chat = self.query_one("#chat-view", VerticalScroll)
        await chat.remove_children()
        items: list[Widget] = []
        for number, m in enumerate(conv.messages):
            if m.role == "user":
                items.append(PromptItem(m.content))
                continue
            trace = AnswerTrace.from_dict(m.trace) if m.trace else None
            answer = AnswerItem(AnswerView.from_spans(m.spans, m.status, trace), number)
            items += [answer, answer.strip]
        await chat.mount_all(items)
        self._records = [record_from_dict(m.cost) for m in conv.messages if m.cost is not None]
        self._show_cost(self._records[-1] if self._records else CostRecord())
        self.query_one("#prompt", Input).focus()

    def action_toggle_why(self) -> None:
        """Show or hide the "why" strip under every answer."""
        self.query_one(ChatView).toggle_class("-why")

    def action_relay_details(self, answer_id: str, relay_index: int) -> None:
        """Open one relay's details (the strip's ▲ markers call this)."""
        items = self.query(f"#{answer_id}")
        if not items:
            return
        trace = items.first(AnswerItem).view.trace
        mark = next((m for m in trace.relays if m.index == relay_index), None)
        if mark is not None:
            self.push_screen(RelayDetailsScreen(mark))

    def action_export(self) -> None:
        if not self.conversation.messages:
            self.say("Nothing to export yet.", "warning", inline=False)
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.export_dir / f"chat-{self.conversation.id or 'unsaved'}-{stamp}.md"
        try:
            self.export_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(export_markdown(self.conversation), encoding="utf-8")
        except OSError as exc:
            self.say(f"Export failed: {exc}", "error")
            return
        self.say(f"Exported to {path}")

    def _save(self) -> None:
        self._history(lambda store: store.save(self.conversation))

    def _history(self, op: Callable[[HistoryStore], T]) -> T | None:
        """Run a history operation; problems are shown, never raised: the chat goes on without it."""
        if self.store is None:
            return None
        try:
            result: T | None = op(self.store)
        except HistoryError as exc:
            self.say(f"History: {exc}. The conversation stays open.", "error")
            result = None
        self._history_problem()
        return result

    # ------------------------------------------------------------ settings

    def action_settings(self) -> None:
        self.push_screen(SettingsScreen(self.settings), self._settings_chosen)

    def _settings_chosen(self, settings: RelaySettings | None) -> None:
        if settings is not None:
            self.settings = settings
            self._update_link()
            self.say("Relay settings updated (they apply from the next answer).", inline=False)

    def set_policy(self, policy: str) -> None:
        self.settings = RelaySettings.model_validate({**self.settings.model_dump(), "policy": policy})
        self._update_link()
        self.say(f"Policy: {policy}", inline=False)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for policy in POLICIES:
            yield SystemCommand(f"Policy: {policy}", POLICY_HELP[policy], partial(self.set_policy, policy))
        yield SystemCommand("New chat", "Start a new conversation (Ctrl+N)", self.action_new_chat)
        yield SystemCommand("History", "Reopen or delete saved conversations (Ctrl+H)", self.action_history)
        yield SystemCommand(
            "Export to markdown", "Write this conversation with provenance (Ctrl+E)", self.action_export
        )
        yield SystemCommand("Relay settings", "Relay limits, N cap, budget, entropy τ (F2)", self.action_settings)

    # ------------------------------------------------------------ status

    def say(self, message: str, severity: str = "information", inline: bool = True) -> None:
        """Tell the user: a toast, and (inline) a line in the chat that stays with the conversation."""
        self.last_message = message
        self.notify(message, severity=severity, timeout=8)  # type: ignore[arg-type]
        if inline:
            self.query_one("#chat-view", VerticalScroll).mount(NoticeItem(message, severity))

    def _busy(self) -> bool:
        if self.job is not None:
            self.say("An answer is running; Esc cancels it first.", "warning", inline=False)
        return self.job is not None

    def _history_problem(self) -> None:
        problem = self.store.take_problem() if self.store is not None else None
        if problem:
            self.say(problem, "warning")

    def _update_link(self) -> None:
        link = cloud_state_text(self.engine.cloud_state, getattr(self.engine, "cloud_address", None))
        self.sub_title = f"{link} · policy {self.settings.policy}"

    def _show_cost(self, answer: CostRecord, live: bool = False) -> None:
        chat = chat_cost([*self._records, answer] if live else self._records)
        self.query_one(CostFooter).show(answer, chat)
