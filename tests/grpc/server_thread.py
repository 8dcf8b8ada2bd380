"""A real grpc.aio relay server on a free loopback port, run on an event loop in a thread so the
(blocking) edge client can talk to it from the test thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from cloud.backend import TransformersBackend
from cloud.config import CloudConfig
from cloud.server import RunningServer, start_server


class ServerThread:
    def __init__(self, backend: TransformersBackend, config: CloudConfig) -> None:
        self.backend = backend
        self.config = config
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.running: RunningServer | None = None

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self.running = self.call(start_server(self.backend, self.config))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        assert self.running is not None
        return f"127.0.0.1:{self.running.port}"

    def call(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace: float = 0.0) -> None:
        if self.running is not None:
            self.call(self.running.stop(grace))
            self.running = None
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)


def tiny_backend(llm_dir: Path) -> TransformersBackend:
    return TransformersBackend.load(llm_dir, device="cpu", dtype="float32", threads=1)


def config(**overrides) -> CloudConfig:
    return CloudConfig(host="127.0.0.1", port=0, **overrides)
