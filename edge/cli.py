"""`relay ask`: one question, the answer streamed with the cloud's spans marked, then the cost."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge.relay.settings import POLICIES


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="edge YAML config (see configs/edge.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    parser.add_argument("--cloud", help='cloud address host:port, "embedded" (default) or "off"')
    parser.add_argument("--policy", choices=POLICIES, help="relay controller for this run")


def config_from_args(args: argparse.Namespace):
    from edge.config import load_edge_config

    overrides = list(args.set)
    if args.cloud:
        overrides.append(f"cloud.address={args.cloud}")
    if args.policy:
        overrides.append(f"relay.policy={args.policy}")
    return load_edge_config(args.config, overrides)


def register(sub: argparse._SubParsersAction) -> None:
    ask = sub.add_parser("ask", help="ask one question; stream the answer and its cost")
    ask.add_argument("question", help="the question (use - to read it from stdin)")
    add_config_args(ask)
    ask.add_argument("--max-new-tokens", type=int, help="answer length limit")
    ask.add_argument(
        "--json", action="store_true", help="print one JSON object (text, spans, cost, why: confidence and relays)"
    )
    ask.set_defaults(func=run_ask)


def run_ask(args: argparse.Namespace) -> int:
    from common.errors import UserError
    from edge.app import open_engine
    from edge.ask_output import AnswerPrinter
    from edge.trace import AnswerTrace

    question = sys.stdin.read() if args.question == "-" else args.question
    if not question.strip():
        raise UserError("the question is empty")
    if args.max_new_tokens is not None:
        args.set.append(f"relay.max_new_tokens={args.max_new_tokens}")
    config = config_from_args(args)
    printer = AnswerPrinter(quiet=args.json)
    with open_engine(config, say=printer.status) as engine:
        if engine.cloud_note:
            printer.status(f"cloud offline, answering with the SLM alone: {engine.cloud_note}")
        stream = engine.answer([{"role": "user", "content": question}], config.relay)
        trace = AnswerTrace()
        for event in stream:
            printer.event(event)
            trace.feed(event)
    if args.json:
        trace.with_costs(stream.record.relays)
        out = {"text": stream.text, "spans": stream.spans, "cost": stream.record.to_dict(), "why": trace.to_dict()}
        print(json.dumps(out, ensure_ascii=False))
    else:
        printer.summary(stream.record, config.prices.currency)
    return 0
