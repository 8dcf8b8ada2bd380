"""The `relay` command: one entry point, one subcommand group per role.

Each role registers its own subcommands (`models`, `export`, `train`, `ask`, `chat`, `edge`,
`cloud`, `eval`; benchmarks are scripts under `benchmarks/`) so this file only dispatches and turns
`UserError` into one line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from common.errors import UserError

# (module, attribute): each module defines `register(subparsers)`; imported lazily so that
# `relay cloud serve` does not import onnxruntime and `relay ask` does not import torch.
ROLES: list[str] = [
    "models.cli",
    "edge.export_cli",
    "training.cli",
    "edge.cli",
    "edge.ui.cli",
    "edge.openai_server",
    "cloud.cli",
    "evaluation.cli",
    "benchmarks.wan",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    import importlib

    for module_name in ROLES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a role whose extra is not installed
            logging.getLogger(__name__).debug("skipping %s: %s", module_name, exc)
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    func: Callable[[argparse.Namespace], int | None] = args.func
    try:
        return int(func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
