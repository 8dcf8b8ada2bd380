"""The LLM behind the relay service, through a deliberately narrow interface.

A backend only appends tokens to a KV cache and returns next-token logits. Sessions, sampling,
limits, streaming and gRPC live elsewhere, so a scale-out engine (vLLM, SGLang) can sit behind the
same proto by implementing these three methods (a request-level engine such as vLLM needs a seam
one level up, at "generate N tokens after this context": issue #12).
This module never imports grpc.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendInfo:
    model_id: str
    vocab_size: int
    eos_ids: tuple[int, ...]
    max_context: int
    device: str
    dtype: str
    tokenizer_sha256: str
    chat_template_sha256: str


class LlmBackend(ABC):
    info: BackendInfo

    @abstractmethod
    def new_cache(self) -> Any:
        """An empty KV cache for one session."""

    @abstractmethod
    def forward(self, cache: Any, ids: list[int]) -> np.ndarray:
        """Append `ids` to `cache`; return float32 logits [vocab] for the next position."""

    @abstractmethod
    def cache_nbytes(self, cache: Any) -> int:
        """Memory the cache holds, for the server's KV budget."""

    def kv_bytes_per_token(self) -> int:
        """KV memory one token of context takes (0: unknown, nothing is reserved ahead)."""
        return 0


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from common.errors import UserError

        raise UserError("device cuda requested but torch sees no CUDA GPU")
    return device


def _keep_faster_cpu_dtype(model: Any, steps: int = 3) -> Any:
    """Time a few decode steps in bfloat16 and in float32 and keep the faster dtype.

    bf16 is only faster on CPUs and kernels with native bf16 support, and a matmul micro-benchmark
    does not predict the whole model (measured here: bf16 matmuls 2.2x faster, the whole 1.5B decode
    step 2.7x slower), so decide on the model itself. The model must be loaded in bf16: bf16 ->
    fp32 -> bf16 round-trips exactly, so nothing is lost whichever way it goes.
    """
    import torch
    from transformers import DynamicCache

    def step_time() -> float:
        cache, times = DynamicCache(), []
        with torch.inference_mode():
            model(input_ids=torch.tensor([[0] * 16]), past_key_values=cache, use_cache=True)
            for _ in range(steps):
                t0 = time.perf_counter()
                model(input_ids=torch.tensor([[0]]), past_key_values=cache, use_cache=True, logits_to_keep=1)
                times.append(time.perf_counter() - t0)
        return min(times)

    bf16 = step_time()
    model.float()
    fp32 = step_time()
    if bf16 < fp32 / 1.1:
        model.to(torch.bfloat16)
    log.info("CPU decode step: bf16 %.0f ms, fp32 %.0f ms -> %s", bf16 * 1e3, fp32 * 1e3, model.dtype)
    return model


class TransformersBackend(LlmBackend):
    """Any causal LM transformers can load, on CUDA or CPU, with a DynamicCache per session."""

    def __init__(self, model: Any, info: BackendInfo) -> None:
        self.model = model
        self.info = info

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        max_context: int | None = None,
    ) -> TransformersBackend:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from models.identity import chat_template_sha256, tokenizer_sha256

        if threads:
            torch.set_num_threads(threads)
        dev = _pick_device(device)
        load_dtype = torch.bfloat16 if dtype == "auto" else getattr(torch, dtype)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=load_dtype).to(dev).eval()
        if dtype == "auto" and dev == "cpu":
            model = _keep_faster_cpu_dtype(model)
        torch_dtype = model.dtype
        config = model.config
        # The GGUF-built Qwen tokenizer trips transformers' Mistral-regex heuristic; its pre-tokenizer
        # was checked and is Qwen2's, so say so explicitly (no correction, no spurious warning).
        tokenizer = AutoTokenizer.from_pretrained(model_dir, fix_mistral_regex=False)
        eos = model.generation_config.eos_token_id
        eos_ids = [*(eos if isinstance(eos, list) else [eos] if eos is not None else [])]
        if tokenizer.eos_token_id is not None:
            eos_ids.append(tokenizer.eos_token_id)
        info = BackendInfo(
            model_id=Path(model_dir).name,
            vocab_size=int(config.vocab_size),
            eos_ids=tuple(dict.fromkeys(eos_ids)),
            max_context=int(max_context or getattr(config, "max_position_embeddings", 4096)),
            device=f"{dev}:0" if dev == "cuda" else dev,
            dtype=str(torch_dtype).removeprefix("torch."),
            tokenizer_sha256=tokenizer_sha256(model_dir),
            chat_template_sha256=chat_template_sha256(model_dir),
        )
        log.info("LLM %s on %s (%s)", info.model_id, info.device, info.dtype)
        return cls(model, info)

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache()

    def forward(self, cache: Any, ids: list[int]) -> np.ndarray:
        import torch

        past = cache.get_seq_length()
        device = self.model.device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        positions = torch.arange(past, past + len(ids), device=device)
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids,
                past_key_values=cache,
                use_cache=True,
                cache_position=positions,
                position_ids=positions[None],
                logits_to_keep=1,
            )
        return out.logits[0, -1].float().cpu().numpy()

    def kv_bytes_per_token(self) -> int:
        c = self.model.config
        heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return 2 * c.num_hidden_layers * heads * head_dim * self.model.dtype.itemsize

    def cache_nbytes(self, cache: Any) -> int:
        total = 0
        for layer in getattr(cache, "layers", []):
            for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if tensor is not None and hasattr(tensor, "numel"):
                    total += tensor.numel() * tensor.element_size()
        return total
