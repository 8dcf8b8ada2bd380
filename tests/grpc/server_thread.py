"""Helpers for tests that need a real grpc.aio relay server on a free loopback port."""

from __future__ import annotations

import time
from pathlib import Path

from cloud.backend import TransformersBackend
from cloud.config import CloudConfig
from cloud.server import BackgroundServer as ServerThread

__all__ = ["ServerThread", "SlowBackend", "config", "free_port", "tiny_backend"]


def tiny_backend(llm_dir: Path) -> TransformersBackend:
    return TransformersBackend.load(llm_dir, device="cpu", dtype="float32", threads=1)


def config(**overrides) -> CloudConfig:
    """A loopback server config: a free port (0) unless `port=` says which."""
    return CloudConfig(**{"host": "127.0.0.1", "port": 0, **overrides})


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SlowBackend:
    """Wraps a backend, sleeps `delay_s` in every model step and counts the steps, so a test can
    act mid-stream and check what ran."""

    def __init__(self, inner, delay_s: float = 0.0) -> None:
        self.inner, self.delay_s, self.info, self.steps = inner, delay_s, inner.info, 0

    def new_cache(self):
        return self.inner.new_cache()

    def forward(self, cache, ids):
        self.steps += 1
        time.sleep(self.delay_s)
        return self.inner.forward(cache, ids)

    def cache_nbytes(self, cache) -> int:
        return self.inner.cache_nbytes(cache)

    def kv_bytes_per_token(self) -> int:
        return self.inner.kv_bytes_per_token()
