"""Export the SLM to ONNX with a KV cache (optimum, `text-generation-with-past`), fp32 and int8.

Two int8 schemes, both with per-channel (or finer) scales, since per-tensor int8 answered wrongly
on the real 0.5B model (MODELS.md): `int8` is weight-only int8 in blocks of 128 inputs per output
channel (onnxruntime MatMulNBits, the default: fastest for batch-1 decode) and `int8-dynamic` is
onnxruntime dynamic quantization with per-channel weight scales.

Every export is verified before it is published to the cache: the fp32 graph must produce the
same greedy tokens as torch on a fixed prompt (int8 is checked to run and reported, since int8
legitimately drifts after some tokens). Exports are built in a temporary directory and renamed
into place with a `.complete` marker, so an interrupted export is never taken as valid.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Literal

from common.errors import UserError
from common.steps import Steps, size_of
from models.cache import is_complete, locked, publish_dir, read_marker
from models.identity import TOKENIZER_FILES, quiet_mistral_regex_warning

Quant = Literal["fp32", "int8", "int8-dynamic"]
QUANTS: tuple[Quant, ...] = ("fp32", "int8", "int8-dynamic")
PARITY_PROMPT = "Tom has 3 boxes with 4 apples in each box. He eats 2 apples. How many are left?"


EXPORT_FORMAT = 2


def onnx_dir(cache_dir: Path, model_name: str, quant: Quant) -> Path:
    return Path(cache_dir) / "onnx" / model_name / quant


def source_identity(slm_hf_dir: Path, cache_dir: Path | None = None) -> dict:
    """What an export was built from: the HF directory and, when it is a cache entry, its marker,
    so re-converting the source (new pin, fixed tokenizer) invalidates the export too. A source
    inside the cache is named relative to it, so a cache mounted elsewhere (a container volume)
    keeps its exports."""
    source = read_marker(slm_hf_dir) or {}
    digest = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
    where = str(slm_hf_dir)
    if cache_dir is not None and slm_hf_dir.resolve().is_relative_to(Path(cache_dir).resolve()):
        where = "cache:" + slm_hf_dir.resolve().relative_to(Path(cache_dir).resolve()).as_posix()
    return {"source": where, "source_marker": digest, "export_format": EXPORT_FORMAT}


def ensure_onnx(
    slm_hf_dir: Path, cache_dir: Path, quant: Quant = "int8", *, verify_tokens: int = 24, steps: Steps | None = None
) -> Path:
    """Return the cached ONNX export of `slm_hf_dir`, exporting (and verifying) it if needed."""
    steps = steps or Steps()
    slm_hf_dir = Path(slm_hf_dir)
    target = onnx_dir(cache_dir, slm_hf_dir.name, quant)
    expect = {**source_identity(slm_hf_dir, cache_dir), "quant": quant}
    legacy = {**source_identity(slm_hf_dir), "quant": quant}  # exports made before cache-relative names
    if (is_complete(target, expect) or is_complete(target, legacy)) and (target / "model.onnx").is_file():
        return target
    if quant != "fp32":
        source = ensure_onnx(slm_hf_dir, cache_dir, "fp32", verify_tokens=verify_tokens, steps=steps)
        quantize = quantize_int8 if quant == "int8" else quantize_int8_dynamic
        build = lambda tmp: quantize(source, tmp)  # noqa: E731
    else:
        build = lambda tmp: export_fp32(slm_hf_dir, tmp, verify_tokens=verify_tokens)  # noqa: E731
    with locked(Path(cache_dir) / "locks" / f"onnx-{slm_hf_dir.name}-{quant}.lock"):
        if is_complete(target, expect):  # another process finished it while we waited
            return target
        what = "export" if quant == "fp32" else "quantize"
        with steps.step(f"{what} {slm_hf_dir.name} → ONNX {quant}") as step:
            publish_dir(target, build, expect)
            step.detail = size_of(target)
        return target


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in (*TOKENIZER_FILES, "config.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def export_fp32(hf_dir: Path, out: Path, *, verify_tokens: int = 24) -> dict:
    """optimum export of `hf_dir` into `out`, then a greedy-parity check against torch."""
    from optimum.exporters.onnx import main_export

    if not (hf_dir / "config.json").is_file():
        raise UserError(f"{hf_dir} is not a Hugging Face model directory (no config.json)")
    started = time.perf_counter()
    quiet_mistral_regex_warning()
    main_export(
        str(hf_dir),
        output=str(out),
        task="text-generation-with-past",
        device="cpu",
        do_validation=False,
        no_post_process=True,
    )
    _copy_tokenizer(hf_dir, out)
    export_s = time.perf_counter() - started
    if verify_tokens:
        torch_ids, onnx_ids = greedy_parity(hf_dir, out, verify_tokens)
        if torch_ids != onnx_ids:
            raise UserError(f"ONNX export differs from torch: {torch_ids} vs {onnx_ids}")
    return {"export_s": round(export_s, 1), "parity_tokens": verify_tokens}


def quantize_int8(fp32_dir: Path, out: Path, block_size: int = 128) -> dict:
    """Weight-only int8 with a scale per output channel and per block of `block_size` inputs
    (MatMulNBits). Finer than per-channel; its GEMV kernel reads int8 weights directly, which is
    what batch-1 decode is bound by (it reached ~79 % of the bandwidth roofline here vs ~60 %
    for dynamic quantization, see benchmarks/slm_decode.py)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    started = time.perf_counter()
    model = onnx.load(str(fp32_dir / "model.onnx"))
    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=block_size, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out / "model.onnx"), use_external_data_format=True)
    _copy_tokenizer(fp32_dir, out)
    return {"quantize_s": round(time.perf_counter() - started, 1), "scheme": f"matmulnbits-int8-block{block_size}"}


def quantize_int8_dynamic(fp32_dir: Path, out: Path) -> dict:
    """onnxruntime dynamic quantization, int8 weights with per-channel scales (per-tensor scales
    answered wrongly on the real 0.5B model, MODELS.md)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    started = time.perf_counter()
    quantize_dynamic(
        str(fp32_dir / "model.onnx"),
        str(out / "model.onnx"),
        weight_type=QuantType.QInt8,
        per_channel=True,
        use_external_data_format=True,
    )
    _copy_tokenizer(fp32_dir, out)
    return {"quantize_s": round(time.perf_counter() - started, 1), "scheme": "dynamic-int8-per-channel"}


def greedy_parity(hf_dir: Path, onnx_path: Path, n_tokens: int) -> tuple[list[int], list[int]]:
    """Greedy ids from torch and from onnxruntime for the same chat prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    from edge.runtime import OnnxSlm
    from edge.vocab import Vocab

    vocab = Vocab.load(onnx_path)
    prompt = vocab.encode_chat([{"role": "user", "content": PARITY_PROMPT}])
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=n_tokens,
            do_sample=False,
            eos_token_id=list(vocab.eos_ids),
            pad_token_id=vocab.eos_ids[0],
        )
    torch_ids = out[0, len(prompt) :].tolist()
    slm = OnnxSlm.load(onnx_path, provider="cpu")
    onnx_ids: list[int] = []
    logits = slm.forward(prompt)
    for _ in range(len(torch_ids)):
        nxt = int(logits.argmax())
        onnx_ids.append(nxt)
        if nxt in vocab.eos_ids:
            break
        logits = slm.forward([nxt])
    return torch_ids, onnx_ids
