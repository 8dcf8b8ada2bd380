"""Relay protocol costs on loopback, measured side by side in one run:

1. overhead per relay beyond LLM compute: client round trip − server time (target p50 ≤ 5 ms);
2. bytes up per relay with sessions, as a median and as a ratio to the stateless re-send of the
   whole context (measured side by side in the same run);
3. cloud prefill tokens ÷ final LLM context length over an answer with 5 relays (target ≤ 1.05),
   with server sessions and with a stateless variant that re-sends the whole context.

The answer is forced to relay 5 times (entropy controller, τ = 0.999), greedy, so both variants
produce the same tokens. `--tiny` runs on tiny random models built on the spot (seconds);
the default runs the real pair (the LLM on this CPU takes a while).

    python -m benchmarks.relay_overhead [--tiny] [--fixed-n 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from cloud.backend import TransformersBackend
from cloud.config import CloudConfig
from cloud.server import BackgroundServer
from edge.cloud_link import CloudLink
from edge.relay.driver import RelayEngine
from edge.relay.settings import RelaySettings
from edge.runtime import OnnxSlm
from edge.vocab import Vocab
from models.identity import tokenizer_sha256

QUESTION = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many?"


def model_dirs(tiny: bool, workdir: Path) -> tuple[Path, Path]:
    """(SLM ONNX dir, LLM HF dir)."""
    from edge.export import ensure_onnx

    if tiny:
        from tests.tiny import build_pair

        slm_hf, llm = build_pair(workdir)
        return ensure_onnx(slm_hf, workdir / "cache", "fp32"), llm
    from models.supply import cache_root, resolve_pair

    pair = resolve_pair()
    return ensure_onnx(pair.slm_dir, cache_root(), "int8"), pair.llm_dir


def one_answer(engine: RelayEngine, settings: RelaySettings):
    stream = engine.answer([{"role": "user", "content": QUESTION}], settings)
    for _ in stream:
        pass
    return stream


def run_variant(slm: OnnxSlm, vocab: Vocab, address: str, onnx_dir: Path, settings, stateless: bool, repeats: int):
    link = CloudLink(address, stateless=stateless, timeout_s=600)
    link.connect(tokenizer_sha256(onnx_dir))
    engine = RelayEngine(slm, vocab, link)
    streams = [one_answer(engine, settings) for _ in range(repeats)]
    link.close()
    return streams


def summarize(streams) -> dict:
    relays = [r for s in streams for r in s.record.relays]
    overhead = [r.round_trip_ms - r.cloud_server_ms for r in relays]
    stream = streams[-1]
    return {
        "relays_per_answer": len(stream.record.relays),
        "overhead_ms_p50": statistics.median(overhead),
        "overhead_ms_p90": sorted(overhead)[int(0.9 * (len(overhead) - 1))],
        "bytes_up_per_relay_median": statistics.median(r.bytes_up for r in relays),
        "relays_measured": len(relays),
        "prefill_tokens": sum(r.cloud_prompt_tokens for r in stream.record.relays),
        "final_context": len(stream.machine.llm_context),
        "answer_ids": stream.machine.answer_ids,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random models instead of the real pair")
    parser.add_argument("--fixed-n", type=int, default=8, help="tokens per relay")
    parser.add_argument("--repeats", type=int, default=3, help="answers per variant")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    onnx_dir, llm_dir = model_dirs(args.tiny, workdir)
    slm = OnnxSlm.load(onnx_dir, provider="cpu")
    vocab = Vocab.load(onnx_dir, vocab_size=slm.vocab_size)
    backend = TransformersBackend.load(llm_dir, device="cpu")
    settings = RelaySettings(policy="entropy", entropy_tau=0.999, fixed_n=args.fixed_n, max_relays=5,
                             max_new_tokens=5 * (args.fixed_n + 4))  # fmt: skip
    with BackgroundServer(backend, CloudConfig(port=0)) as server:
        cached = summarize(run_variant(slm, vocab, server.address, onnx_dir, settings, False, args.repeats))
        stateless = summarize(run_variant(slm, vocab, server.address, onnx_dir, settings, True, args.repeats))
    print_report(cached, stateless, args, llm_dir)
    if args.json:
        args.json.write_text(json.dumps({"sessions": cached, "stateless": stateless}, indent=1))
    return 0


def print_report(cached: dict, stateless: dict, args: argparse.Namespace, llm_dir: Path) -> None:
    same = cached["answer_ids"] == stateless["answer_ids"]
    print(f"relay benchmark on loopback: LLM {llm_dir.name}, N = {args.fixed_n}, {args.repeats} answers per variant")
    print(f"{'':34} {'sessions':>10} {'stateless':>10}")
    rows = [
        ("relays per answer", "relays_per_answer", "{:d}"),
        ("overhead ms p50 (target ≤ 5)", "overhead_ms_p50", "{:.2f}"),
        ("overhead ms p90", "overhead_ms_p90", "{:.2f}"),
        ("bytes up per relay, median", "bytes_up_per_relay_median", "{:.0f}"),
        ("cloud prefill tokens", "prefill_tokens", "{:d}"),
        ("final LLM context tokens", "final_context", "{:d}"),
    ]
    for label, key, fmt in rows:
        print(f"{label:34} {fmt.format(cached[key]):>10} {fmt.format(stateless[key]):>10}")
    ratio = cached["bytes_up_per_relay_median"] / stateless["bytes_up_per_relay_median"]
    print(f"bytes up per relay, sessions ÷ stateless re-send (medians): {ratio:.2f}")
    for name, fig in (("sessions", cached), ("stateless", stateless)):
        print(f"prefill ÷ final context ({name}): {fig['prefill_tokens'] / fig['final_context']:.3f}")
    print(f"same answer tokens in both variants: {same}")


if __name__ == "__main__":
    sys.exit(main())
