"""Shared fixtures: tiny models built once per session (offline), exported to ONNX."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny import build_pair


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_pair(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_pair: tuple[Path, Path], tiny_cache: Path) -> Path:
    from edge.export import ensure_onnx

    return ensure_onnx(tiny_pair[0], tiny_cache, "fp32")


@pytest.fixture(scope="session")
def tiny_onnx_int8(tiny_pair: tuple[Path, Path], tiny_cache: Path, tiny_onnx: Path) -> Path:
    from edge.export import ensure_onnx

    return ensure_onnx(tiny_pair[0], tiny_cache, "int8")
