"""`relay chat`: open the chat app on the engine the edge config describes.

With no configuration the engine is the embedded default (a local cloud on loopback, the bundled
model pair); `--cloud` or the YAML config points it at a remote cloud. The config flags are the
same as `relay ask` (`edge.cli.add_config_args`). Heavy imports (onnxruntime, Textual) happen
inside `run`, so `relay --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    from edge.cli import add_config_args

    parser = subparsers.add_parser(
        "chat",
        help="chat in the terminal: the SLM here, the cloud LLM on call",
        description=__doc__.splitlines()[0],
    )
    add_config_args(parser)
    parser.add_argument("--history", type=Path, metavar="PATH", help="history database (SQLite)")
    parser.set_defaults(func=run)


def default_history_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("relayllm")) / "history.db"


def run(args: argparse.Namespace) -> int:
    from common.steps import Steps
    from edge.app import open_engine
    from edge.cli import config_from_args
    from edge.ui.app import ChatApp
    from models.supply import cache_root

    config = config_from_args(args)
    history = args.history or config.history_path or default_history_path()
    # Models load before the app has a screen: one line per step, library output to a log file.
    steps = Steps.to_log(cache_root(config.models.cache_dir) / "logs" / "setup.log")
    with open_engine(config, say=steps.say, steps=steps) as engine:
        steps.finish()
        ChatApp(engine, settings=config.relay, history_path=history).run()
    return 0
