from __future__ import annotations

from pathlib import Path

import pytest

from edge.runtime import OnnxSlm
from edge.vocab import Vocab
from tests.grpc.server_thread import ServerThread, config, tiny_backend


@pytest.fixture(scope="session")
def llm_backend(tiny_pair: tuple[Path, Path]):
    return tiny_backend(tiny_pair[1])


@pytest.fixture
def server(llm_backend):
    with ServerThread(llm_backend, config()) as running:
        yield running


@pytest.fixture(scope="session")
def vocab(tiny_onnx: Path) -> Vocab:
    return Vocab.load(tiny_onnx)


@pytest.fixture
def slm(tiny_onnx: Path) -> OnnxSlm:
    return OnnxSlm.load(tiny_onnx, provider="cpu", threads=1)
