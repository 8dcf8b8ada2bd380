"""Per-session LLM context and KV cache, with an LRU cap on sessions and on KV memory, and an idle TTL.

A session holds its token ids (the LLM's context so far) and the engine's state for it (the step
engine's KV cache; nothing for vLLM, which finds the shared prefix in its own cache). The engine
prefills only what is new (see `cloud.engine`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class SessionError(Exception):
    """Unknown, expired or evicted session (the client re-sends its whole context)."""


class CapacityError(Exception):
    """Every session is busy and no more can be opened."""


@dataclass
class Session:
    session_id: str
    state: Any
    """The engine's per-session state (`Engine.new_state`)."""
    ids: list[int] = field(default_factory=list)
    kv_bytes: int = 0
    reserved: int = 0
    """KV bytes this session may grow to during the relay under way (held against the budget)."""
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def touch(self) -> None:
        self.last_used = time.monotonic()


class SessionStore:
    def __init__(
        self,
        new_state: Callable[[], Any],
        *,
        max_sessions: int,
        max_kv_bytes: int,
        idle_ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._new_state = new_state
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self.max_sessions = max_sessions
        self.max_kv_bytes = max_kv_bytes
        self.idle_ttl_s = idle_ttl_s
        self._clock = clock
        self.evictions = 0
        self.stateless_reserved = 0
        """KV bytes held by stateless calls under way (they have no session but use memory)."""

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def kv_bytes(self) -> int:
        return sum(s.kv_bytes for s in self._sessions.values())

    @property
    def committed_bytes(self) -> int:
        """KV memory held or reserved: what a new reservation is checked against."""
        held = sum(max(s.kv_bytes, s.reserved) for s in self._sessions.values())
        return held + self.stateless_reserved

    def reserve(self, session: Session, nbytes: int) -> None:
        """Hold `nbytes` for a relay before any memory is allocated; evict idle LRU sessions to
        make room, or raise CapacityError (RESOURCE_EXHAUSTED) when it cannot fit."""
        if nbytes > self.max_kv_bytes:
            raise CapacityError(
                f"this relay needs {nbytes >> 20} MiB of KV cache, over the {self.max_kv_bytes >> 20} MiB budget"
            )
        keep = session.session_id
        while self.committed_bytes - self._held_by(session) + nbytes > self.max_kv_bytes:
            if not self._evict_one(keep=keep):
                raise CapacityError("KV-cache budget exhausted by relays under way; retry shortly")
        if session.session_id:
            session.reserved = nbytes
        else:
            self.stateless_reserved += nbytes

    def release(self, session: Session, nbytes: int) -> None:
        if session.session_id:
            session.reserved = 0
        else:
            self.stateless_reserved = max(0, self.stateless_reserved - nbytes)

    def _held_by(self, session: Session) -> int:
        if session.session_id and session.session_id in self._sessions:
            return max(session.kv_bytes, session.reserved)
        return 0

    def open(self) -> Session:
        self.expire_idle()
        while len(self._sessions) >= self.max_sessions:
            if not self._evict_one():
                raise CapacityError(f"all {self.max_sessions} sessions are busy")
        session = Session(secrets.token_hex(16), self._new_state(), last_used=self._clock())
        self._sessions[session.session_id] = session
        return session

    def get(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionError(f"unknown or expired session {session_id[:8]}…")
        self._sessions.move_to_end(session_id)
        session.last_used = self._clock()
        return session

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    def close(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None

    def update_usage(self, session: Session, kv_bytes: int) -> None:
        """Record a session's KV size after a relay and evict LRU sessions over the budget."""
        session.kv_bytes = kv_bytes
        session.last_used = self._clock()
        while self.kv_bytes > self.max_kv_bytes and len(self._sessions) > 1:
            if not self._evict_one(keep=session.session_id):
                break

    def expire_idle(self) -> int:
        now = self._clock()
        stale = [
            sid for sid, s in self._sessions.items() if now - s.last_used > self.idle_ttl_s and not s.lock.locked()
        ]
        for sid in stale:
            del self._sessions[sid]
        return len(stale)

    def _evict_one(self, keep: str = "") -> bool:
        for sid, session in self._sessions.items():  # oldest first
            if sid != keep and not session.lock.locked():
                del self._sessions[sid]
                self.evictions += 1
                return True
        return False
