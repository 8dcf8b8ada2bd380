"""Session store limits (LRU count, KV memory, idle TTL) and the generated stubs staying in step."""

from __future__ import annotations

import pytest

from cloud.sessions import CapacityError, SessionError, SessionStore
from common import protogen


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def store(clock: Clock, **limits) -> SessionStore:
    defaults = {"max_sessions": 3, "max_kv_bytes": 1000, "idle_ttl_s": 10.0}
    return SessionStore(dict, clock=clock, **{**defaults, **limits})


def test_lru_eviction_on_session_count() -> None:
    clock = Clock()
    s = store(clock)
    a, b, c = s.open(), s.open(), s.open()
    s.get(a.session_id)  # a is now the most recently used
    s.open()
    with pytest.raises(SessionError):
        s.get(b.session_id)  # b was the least recently used
    assert s.get(a.session_id) and s.get(c.session_id) and s.evictions == 1


def test_kv_budget_evicts_least_recent_but_keeps_the_current() -> None:
    clock = Clock()
    s = store(clock, max_sessions=10)
    a, b = s.open(), s.open()
    s.update_usage(a, 600)
    s.update_usage(b, 600)  # over 1000 bytes: a goes
    assert len(s) == 1 and s.get(b.session_id) and s.kv_bytes == 600


def test_idle_sessions_expire() -> None:
    clock = Clock()
    s = store(clock)
    a = s.open()
    clock.now = 5
    b = s.open()
    clock.now = 12
    assert s.expire_idle() == 1
    with pytest.raises(SessionError):
        s.get(a.session_id)
    assert s.get(b.session_id)


async def test_busy_sessions_are_never_evicted() -> None:
    clock = Clock()
    s = store(clock, max_sessions=1)
    a = s.open()
    async with a.lock:
        with pytest.raises(CapacityError):
            s.open()


def test_generated_stubs_match_the_proto() -> None:
    from common import wire  # noqa: F401  (importing regenerates stale stubs)

    assert protogen.is_current()
    assert protogen.STAMP.read_text().strip() == protogen.proto_digest()
