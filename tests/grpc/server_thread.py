"""Helpers for tests that need a real grpc.aio relay server on a free loopback port."""

from __future__ import annotations

from pathlib import Path

from cloud.backend import TransformersBackend
from cloud.config import CloudConfig
from cloud.server import BackgroundServer as ServerThread

__all__ = ["ServerThread", "config", "tiny_backend"]


def tiny_backend(llm_dir: Path) -> TransformersBackend:
    return TransformersBackend.load(llm_dir, device="cpu", dtype="float32", threads=1)


def config(**overrides) -> CloudConfig:
    return CloudConfig(host="127.0.0.1", port=0, **overrides)
