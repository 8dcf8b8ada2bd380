"""`relay chat`: open the chat app on the engine the edge config describes.

With no configuration the engine is the embedded default (a local cloud on loopback, the bundled
model pair); `--cloud` or the YAML config points it at a remote cloud. Heavy imports (onnxruntime,
Textual) happen inside `run`, so `relay --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="chat in the terminal: the SLM here, the cloud LLM on call",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--config", type=Path, metavar="PATH", help="edge config YAML")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set relay.policy=entropy (repeatable)",
    )
    parser.add_argument("--cloud", metavar="ADDRESS", help="remote cloud host:port (default: embedded local)")
    parser.add_argument("--history", type=Path, metavar="PATH", help="history database (SQLite)")
    parser.set_defaults(func=run)


def default_history_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("relayllm")) / "history.db"


def run(args: argparse.Namespace) -> int:
    from edge.app import open_engine
    from edge.config import load_edge_config
    from edge.relay.settings import RelaySettings
    from edge.ui.app import ChatApp

    overrides = list(args.overrides)
    if args.cloud:
        overrides.append(f"cloud.address={args.cloud}")
    config = load_edge_config(args.config, overrides)
    relay = getattr(config, "relay", None)
    settings = relay if isinstance(relay, RelaySettings) else RelaySettings()
    history = args.history or getattr(config, "history_path", None) or default_history_path()
    with open_engine(config) as engine:
        ChatApp(engine, settings=settings, history_path=history).run()
    return 0
