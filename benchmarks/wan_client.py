"""The edge side of `relay bench wan`: answer prompts through one cloud address with each policy,
one JSON line per answer on stdout. benchmarks/wan.py runs it inside the edge's network namespace.

    python -m benchmarks.wan_client --cloud 10.77.0.2:50051 --prompts prompts.json \
        --policies entropy,cloud-only [--set models.slm_onnx_dir=...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def answer_row(engine, prompt: str, label: str, settings, profile: str) -> dict:
    from edge.relay.driver import AnswerStream

    t0 = time.perf_counter()
    stream: AnswerStream = engine.answer([{"role": "user", "content": prompt}], settings)
    for _ in stream:
        pass
    wall_ms = (time.perf_counter() - t0) * 1e3
    record = stream.record
    round_trip = sum(r.round_trip_ms for r in record.relays)
    return {
        "profile": profile,
        "policy": label,
        "wall_ms": wall_ms,
        "network_ms": max(0.0, round_trip - record.cloud_ms),
        "edge_ms": record.edge_ms,
        "cloud_ms": record.cloud_ms,
        "bytes": record.bytes_up + record.bytes_down,
        "relays": len(record.relays),
        "llm_tokens": record.llm_tokens,
        "answer_tokens": record.answer_tokens,
        "money": record.money,
        "fallbacks": record.fallbacks,
    }


def main(argv: list[str] | None = None) -> int:
    from edge.app import open_engine
    from edge.config import load_edge_config
    from evaluation.harness import policy_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cloud", required=True, help="host:port of the cloud (or of a delay proxy before it)")
    parser.add_argument("--prompts", type=Path, required=True, help="JSON list of prompts")
    parser.add_argument("--policies", default="entropy,cloud-only")
    parser.add_argument("--profile", default="", help="label copied into each row")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="edge config override")
    args = parser.parse_args(argv)
    config = load_edge_config(None, [f"cloud.address={args.cloud}", *args.set])
    base = config.relay.model_copy(update={"max_new_tokens": args.max_new_tokens, "temperature": 0.0})
    prompts = json.loads(args.prompts.read_text())
    with open_engine(config) as engine:
        if engine.link is None:
            print(f"cloud at {args.cloud} unusable: {engine.cloud_note}", file=sys.stderr)
            return 1
        for prompt in prompts:
            for label in args.policies.split(","):
                row = answer_row(engine, prompt, label, policy_settings(label, base), args.profile)
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
