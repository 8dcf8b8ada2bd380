"""The SLM on onnxruntime: one decoder graph with a KV cache (optimum `text-generation-with-past`).

`OnnxSlm.forward(ids)` appends any number of tokens to the cache and returns the logits of the
last position, so prefill, one-token decode and splicing a chunk of the LLM's tokens into the
cache (without recomputing the prefix) are the same call. Long inputs are fed in chunks so the
[seq, vocab] logits buffer stays small (151,936 floats per position for Qwen).

The graph's inputs and outputs are checked once at load: we support one exported layout and fail
fast on anything else rather than guessing per call.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common.errors import UserError

log = logging.getLogger(__name__)

_PAST_RE = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_ONNX_TO_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class GraphLayout:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    kv_dtype: type
    has_position_ids: bool
    past_names: list[str]
    present_names: list[str]


def inspect_graph(session: ort.InferenceSession) -> GraphLayout:
    """Validate the decoder's I/O names once; raise UserError on an unsupported graph."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    for required in ("input_ids", "attention_mask"):
        if required not in inputs:
            raise UserError(f"ONNX graph lacks input {required!r}: export with text-generation-with-past")
    past = sorted((n for n in inputs if _PAST_RE.match(n)), key=_layer_key)
    if not past or len(past) % 2:
        raise UserError("ONNX graph has no KV-cache inputs past_key_values.N.key/value")
    present = [n.replace("past_key_values", "present") for n in past]
    missing = [n for n in ["logits", *present] if n not in outputs]
    if missing:
        raise UserError(f"ONNX graph lacks outputs {missing[:3]}")
    first = inputs[past[0]]
    heads, head_dim = first.shape[1], first.shape[3]
    if not isinstance(heads, int) or not isinstance(head_dim, int):
        raise UserError("ONNX graph's KV inputs need static head and head_dim dimensions")
    return GraphLayout(
        num_layers=len(past) // 2,
        num_kv_heads=heads,
        head_dim=head_dim,
        kv_dtype=_ONNX_TO_NUMPY.get(first.type, np.float32),
        has_position_ids="position_ids" in inputs,
        past_names=past,
        present_names=present,
    )


def _layer_key(name: str) -> tuple[int, int]:
    match = _PAST_RE.match(name)
    assert match
    return int(match.group(1)), 0 if match.group(2) == "key" else 1


def pick_providers(provider: str) -> list[str]:
    available = ort.get_available_providers()
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if provider == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise UserError("CUDA requested but this onnxruntime has no CUDAExecutionProvider")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxSlm:
    """A batch-1 decoder session with its KV cache."""

    def __init__(
        self,
        session: ort.InferenceSession,
        layout: GraphLayout,
        max_context: int,
        vocab_size: int,
        prefill_chunk: int = 128,
    ) -> None:
        self.session = session
        self.layout = layout
        self.max_context = max_context
        self.vocab_size = vocab_size
        self.prefill_chunk = prefill_chunk
        self.provider = session.get_providers()[0]
        self._past: dict[str, np.ndarray] = {}
        self.ids: list[int] = []
        """The token ids whose keys and values the cache holds."""
        self.reset()

    @classmethod
    def load(
        cls, model_dir: str | Path, *, provider: str = "auto", threads: int | None = None, spin: bool = True
    ) -> OnnxSlm:
        model_dir = Path(model_dir)
        graph = model_dir / "model.onnx"
        if not graph.is_file():
            raise UserError(f"no ONNX model at {graph} (run `relay models pull` or `relay export`)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning worker threads decode ~20 % faster here (no wake-up per op) but burn CPU while
        # idle; turn it off when the SLM shares few cores with other busy processes.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if provider == "auto":
            # onnxruntime-gpu lists CUDA even where its libraries are missing and then logs a
            # loud error while falling back; in auto mode the fallback is expected, so quiet it.
            ort.set_default_logger_severity(4)
        try:
            session = ort.InferenceSession(str(graph), options, providers=pick_providers(provider))
        finally:
            ort.set_default_logger_severity(2)
        config = json.loads((model_dir / "config.json").read_text())
        slm = cls(
            session,
            inspect_graph(session),
            max_context=int(config.get("max_position_embeddings", 4096)),
            vocab_size=int(config["vocab_size"]),
        )
        log.info("SLM %s on %s", model_dir, slm.provider)
        return slm

    def reset(self) -> None:
        lay = self.layout
        empty = np.zeros((1, lay.num_kv_heads, 0, lay.head_dim), dtype=lay.kv_dtype)
        self._past = {name: empty for name in lay.past_names}
        self.ids = []

    @property
    def context_len(self) -> int:
        return len(self.ids)

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Make the cache hold exactly `ids`, reusing the longest prefix it already holds.

        The next turn of a chat starts with the previous turn's prompt, so only the new tokens are
        computed. At least one token is always run, because its logits are needed.
        """
        if not ids:
            raise ValueError("prefill() needs at least one token")
        keep = 0
        limit = min(len(ids) - 1, len(self.ids))
        while keep < limit and self.ids[keep] == ids[keep]:
            keep += 1
        self._past = {name: past[:, :, :keep, :] for name, past in self._past.items()}
        self.ids = self.ids[:keep]
        return self.forward(ids[keep:])

    def forward(self, ids: list[int]) -> np.ndarray:
        """Append `ids` to the cache; return float32 logits [vocab] for the next position."""
        if not ids:
            raise ValueError("forward() needs at least one token")
        if self.context_len + len(ids) > self.max_context:
            raise UserError(f"context full: {self.context_len + len(ids)} tokens > max context {self.max_context}")
        logits = None
        for start in range(0, len(ids), self.prefill_chunk):
            logits = self._run(ids[start : start + self.prefill_chunk])
        assert logits is not None
        return logits

    def _run(self, ids: list[int]) -> np.ndarray:
        n, past_len = len(ids), len(self.ids)
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, past_len + n), dtype=np.int64),
            **self._past,
        }
        if self.layout.has_position_ids:
            feeds["position_ids"] = np.arange(past_len, past_len + n, dtype=np.int64)[None, :]
        outputs = self.session.run(["logits", *self.layout.present_names], feeds)
        self._past = dict(zip(self.layout.past_names, outputs[1:], strict=True))
        self.ids += ids
        return np.asarray(outputs[0][0, -1], dtype=np.float32)
