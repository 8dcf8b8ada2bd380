"""`relay export`: the SLM to ONNX (fp32 and int8 per-channel), verified against torch."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="export the SLM to ONNX with a KV cache (verified)")
    export.add_argument("--pair", help="model pair whose SLM to export (default: the registry default)")
    export.add_argument("--slm", help="a model name, hub id or HF directory instead of the pair's SLM")
    export.add_argument("--quant", choices=["fp32", "int8", "int8-dynamic", "all"], default="all")
    export.add_argument("--cache-dir", type=Path, help="model cache root")
    export.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from edge.export import QUANTS, ensure_onnx
    from models.supply import cache_root, ensure_model, resolve_pair

    slm_dir = (
        ensure_model(args.slm, cache_dir=args.cache_dir)
        if args.slm
        else resolve_pair(args.pair, cache_dir=args.cache_dir).slm_dir
    )
    for quant in QUANTS if args.quant == "all" else (args.quant,):
        path = ensure_onnx(slm_dir, cache_root(args.cache_dir), quant)
        print(f"{quant}: {path}")
    return 0
