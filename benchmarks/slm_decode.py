"""SLM decode speed: torch fp32 eager vs ONNX fp32 vs ONNX int8, on one prompt, in one run.

Each variant runs in its own subprocess so its peak RSS is its own. Prints tokens/s of the
decode phase (prefill excluded), peak RSS, whether the greedy token streams match torch, and the
memory-bandwidth roofline: weight bytes read per decoded token ÷ measured copy bandwidth.

    python -m benchmarks.slm_decode [--tokens 64] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROMPT = "Tom has 3 boxes with 4 apples in each box. He eats 2 apples. How many apples does he have left?"


def _prompt_ids(model_dir: Path) -> list[int]:
    from edge.vocab import Vocab

    return Vocab.load(model_dir).encode_chat([{"role": "user", "content": PROMPT}])


def run_torch(hf_dir: Path, tokens: int, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    torch.set_num_threads(threads)
    ids = _prompt_ids(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    cache, out, steps = DynamicCache(), [], []
    with torch.inference_mode():
        logits = model(torch.tensor([ids]), past_key_values=cache, use_cache=True).logits[0, -1]
        for _ in range(tokens):
            out.append(int(logits.argmax()))
            t0 = time.perf_counter()
            logits = model(torch.tensor([[out[-1]]]), past_key_values=cache, use_cache=True).logits[0, -1]
            steps.append(time.perf_counter() - t0)
    return {"ids": out, "step_s": steps}


def run_onnx(onnx_dir: Path, tokens: int, threads: int) -> dict:
    from edge.runtime import OnnxSlm

    ids = _prompt_ids(onnx_dir)
    slm = OnnxSlm.load(onnx_dir, provider="cpu", threads=threads)
    logits, out, steps = slm.forward(ids), [], []
    for _ in range(tokens):
        out.append(int(logits.argmax()))
        t0 = time.perf_counter()
        logits = slm.forward([out[-1]])
        steps.append(time.perf_counter() - t0)
    return {"ids": out, "step_s": steps, "provider": slm.provider}


def child(kind: str, path: str, tokens: int, threads: int) -> None:
    runner = run_torch if kind == "torch" else run_onnx
    result = runner(Path(path), tokens, threads)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def copy_bandwidth_gbs(threads: int = 1, size_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Memory traffic of a large copy (read + write bytes per second) split over `threads`, best of
    `repeats`. numpy releases the GIL while copying, so the threads really run in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    src = np.ones(size_bytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    bounds = np.linspace(0, src.size, threads + 1).astype(int)
    slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    with ThreadPoolExecutor(threads) as pool:

        def copy() -> None:
            list(pool.map(lambda part: np.copyto(dst[part], src[part]), slices))

        best = min(_timed(copy) for _ in range(repeats))
    return 2 * size_bytes / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def weight_bytes_per_token(onnx_dir: Path) -> int:
    """Bytes of initializers a decode step reads: all weights except the embedding table (a gather)."""
    import onnx

    model = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False)
    gathered = {n.input[0] for n in model.graph.node if n.op_type == "Gather"}
    total = 0
    for init in model.graph.initializer:
        if init.name in gathered:
            continue
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
        total += int(np.prod(init.dims)) * itemsize
    return total


def measure(kind: str, path: Path, tokens: int, threads: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.slm_decode", "--child", kind, str(path), str(tokens), str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["tok_s"] = 1 / statistics.median(result["step_s"])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--pair", default=None, help="model pair (default: the registry's default)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.child:
        kind, path, tokens, threads = args.child
        child(kind, path, int(tokens), int(threads))
        return 0
    from edge.export import ensure_onnx
    from models.supply import cache_root, resolve_pair

    pair = resolve_pair(args.pair)
    onnx = {q: ensure_onnx(pair.slm_dir, cache_root(), q) for q in ("fp32", "int8", "int8-dynamic")}
    runs = {"torch fp32 eager": measure("torch", pair.slm_dir, args.tokens, args.threads)}
    for quant, path in onnx.items():
        runs[f"onnx {quant}"] = measure("onnx", path, args.tokens, args.threads)
    bandwidth = {1: copy_bandwidth_gbs(1), args.threads: copy_bandwidth_gbs(args.threads)}
    report(runs, bandwidth, {q: weight_bytes_per_token(d) for q, d in onnx.items()}, args)
    return 0


def report(runs: dict, bandwidth: dict[int, float], weights: dict, args: argparse.Namespace) -> None:
    """Roofline = copy bandwidth ÷ weight bytes per token, with a 1-thread copy (the convention of
    MODELS.md) and with a copy on as many threads as the decode uses (the stricter bound)."""
    reference = runs["torch fp32 eager"]
    base = reference["tok_s"]
    wide = max(bandwidth)
    print(f"SLM decode, {args.tokens} greedy tokens, {args.threads} threads, median step time")
    print(
        f"{'variant':18} {'tok/s':>7} {'× torch':>8} {'peak RSS MB':>12} {'tokens = torch':>15} "
        f"{'of roofline (1-thread copy)':>28} {f'({wide}-thread copy)':>18}"
    )
    figures: dict = {"copy_bandwidth_gbs": bandwidth, "weight_bytes_per_token": weights, "runs": {}}
    for name, run in runs.items():
        same = _common_prefix(run["ids"], reference["ids"])
        quant = name.removeprefix("onnx ")
        roofs = {t: bw * 1e9 / weights[quant] for t, bw in bandwidth.items()} if quant in weights else {}
        shares = [f"{run['tok_s'] / roofs[t]:.0%}" if roofs else "-" for t in (1, wide)]
        print(
            f"{name:18} {run['tok_s']:7.1f} {run['tok_s'] / base:8.2f} {run['peak_rss_mb']:12.0f} "
            f"{same:>8}/{len(reference['ids']):<6} {shares[0]:>28} {shares[1]:>18}"
        )
        figures["runs"][name] = {k: v for k, v in run.items() if k != "step_s"} | {"roofline_tok_s": roofs}
    print(
        "copy bandwidth (read+write): "
        + ", ".join(f"{t} thread(s) {bw:.1f} GB/s" for t, bw in bandwidth.items())
        + "; weights read per token: "
        + ", ".join(f"{q} {b / 1e6:.0f} MB" for q, b in weights.items())
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


if __name__ == "__main__":
    sys.exit(main())
