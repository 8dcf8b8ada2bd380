"""Modal screens: the history list (reopen, delete) and the relay settings form.

Both return their result through `dismiss` (a conversation id, new `RelaySettings`) so the app
decides what to do with it; the history screen deletes through a callback for the same reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from edge.relay.settings import POLICIES, RelaySettings
from edge.ui.history import ConversationSummary


class HistoryScreen(ModalScreen[int | None]):
    """Saved conversations, newest first. Enter reopens, d deletes, Esc closes."""

    BINDINGS = [
        Binding("escape", "dismiss_none", "Close"),
        Binding("d,delete", "delete", "Delete"),
    ]

    def __init__(self, conversations: list[ConversationSummary], on_delete: Callable[[int], None]) -> None:
        super().__init__()
        self.conversations = conversations
        self.on_delete = on_delete

    def compose(self) -> ComposeResult:
        with Vertical(id="history-box", classes="modal-box"):
            yield Label("History", classes="modal-title")
            yield OptionList(*[self._option(c) for c in self.conversations], id="history-list")
            hint = "Enter reopen · d delete · Esc close" if self.conversations else "No saved conversations yet."
            yield Static(hint, classes="modal-hint")

    @staticmethod
    def _option(conv: ConversationSummary) -> Option:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(conv.updated))
        return Option(f"{when}  {conv.title or '(untitled)'}  [{conv.messages} msgs]", id=str(conv.id))

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id or 0))

    def action_delete(self) -> None:
        options = self.query_one(OptionList)
        if options.highlighted is None:
            return
        option = options.get_option_at_index(options.highlighted)
        self.on_delete(int(option.id or 0))
        options.remove_option(option.id or "")

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


_FIELDS: list[tuple[str, str]] = [
    ("max_relays", "Relays per answer"),
    ("max_n", "Max N per relay"),
    ("max_new_tokens", "Max answer tokens"),
    ("fixed_n", "N for head/entropy/random"),
    ("head_tau", "Call head τ (probability)"),
    ("entropy_tau", "Entropy τ (top-1 prob.)"),
    ("call_bias", "Call bias (learned; + calls more)"),
    ("budget_usd", "Budget per answer, USD (empty: none)"),
]


class SettingsScreen(ModalScreen[RelaySettings | None]):
    """Edit the controller policy and the relay limits; validated by `RelaySettings`."""

    BINDINGS = [Binding("escape", "dismiss_none", "Cancel")]

    def __init__(self, settings: RelaySettings) -> None:
        super().__init__()
        self.settings = settings

    def compose(self) -> ComposeResult:
        with Vertical(id="settings-box", classes="modal-box"):
            yield Label("Relay settings", classes="modal-title")
            with Grid(id="settings-grid"):
                yield Label("Policy")
                yield Select([(p, p) for p in POLICIES], value=self.settings.policy, allow_blank=False, id="policy")
                for name, label in _FIELDS:
                    value = getattr(self.settings, name)
                    yield Label(label)
                    yield Input("" if value is None else str(value), id=name)
            yield Static("", id="settings-error")
            with Horizontal(classes="modal-buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def values(self) -> dict[str, Any]:
        data: dict[str, Any] = {"policy": self.query_one("#policy", Select).value}
        for name, _ in _FIELDS:
            text = self.query_one(f"#{name}", Input).value.strip()
            data[name] = None if text == "" and name == "budget_usd" else text
        return data

    @on(Button.Pressed, "#save")
    @on(Input.Submitted)
    def save(self) -> None:
        try:
            settings = RelaySettings.model_validate({**self.settings.model_dump(), **self.values()})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            self.query_one("#settings-error", Static).update(f"{where}: {first['msg']}")
            return
        self.dismiss(settings)

    @on(Button.Pressed, "#cancel")
    def action_dismiss_none(self) -> None:
        self.dismiss(None)
