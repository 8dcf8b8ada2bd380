"""The cloud for many edges: the transformers step engine against vLLM, through the relay's gRPC API.

For each engine, one server on loopback (transformers in this process; vLLM as `relay cloud serve
--engine vllm` from .venv-vllm, as deployed), then, measured with the project's own wire protocol:

1. aggregate generated tokens/s with 1, 4, 8 and 16 concurrent sessions (each: its own prompt,
   `--tokens` greedy tokens), and the p50/p99 relay latency;
2. per-relay overhead beyond compute: client round trip − server total time (median of 10);
3. KV computed by the cloud ÷ final context over one session's 5-relay answer (SLM text between
   relays): 1.0 means nothing was computed twice. vLLM's prefix cache reuses whole blocks only, so
   the partial last block of each relay's context is computed again (`--vllm-block-size`).

    python -m benchmarks.cloud_engines [--engines transformers,vllm] [--llm qwen2.5-coder-1.5b-instruct]
                                       [--sessions 1,4,8,16] [--tokens 24] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc

from common.ready import read_ready_address
from common.wire import pb, pb_grpc

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs.",
    "Julie is reading a 120-page book. Yesterday, she was able to read 12 pages and today twice as many.",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages a year?",
    "Mark has a garden with flowers. He planted plants of three different colors in it.",
    "Albert is wondering how much pizza he can eat in one day. He buys 2 large pizzas and 2 small pizzas.",
    "Ken created a care package to send to his brother, who was away at boarding school.",
]


@contextmanager
def serve(engine: str, model_dir: Path, block_size: int) -> Iterator[str]:
    if engine == "transformers":
        from cloud.backend import TransformersBackend
        from cloud.config import CloudConfig
        from cloud.server import BackgroundServer

        backend = TransformersBackend.load(model_dir, device="auto")
        with BackgroundServer(backend, CloudConfig(host="127.0.0.1", port=0, max_sessions=64)) as server:
            yield server.address
        del backend, server
        import gc

        gc.collect()  # give the weights back before vLLM checks for free memory
        return
    python = ROOT / ".venv-vllm" / "bin" / "python"
    if not python.is_file():
        raise SystemExit("no .venv-vllm: run `make vllm` first")
    cmd = [str(python), "-m", "relaycli.main", "cloud", "serve", "--engine", "vllm", "--llm", str(model_dir),
           "--port", "0", "--set", "max_sessions=64", "--set", f"vllm.block_size={block_size}"]  # fmt: skip
    env = {"VLLM_CPU_KVCACHE_SPACE": "4", **os.environ, "PYTHONUNBUFFERED": "1"}
    log = Path("runs") / "bench-vllm-server.log"
    log.parent.mkdir(exist_ok=True)
    with open(log, "w") as err:
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    address = read_ready_address(child, 900)
    try:
        if address is None:
            raise SystemExit(f"vLLM server did not start; see {log}")
        yield address
    finally:
        child.terminate()
        child.wait(60)


def relay(stub, **fields) -> tuple[list[int], object, float]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    chunks = list(stub.Relay(pb.RelayRequest(**fields), timeout=600))
    ids = [i for c in chunks[:-1] for i in c.tokens.ids]
    return ids, chunks[-1].done, (time.perf_counter() - started) * 1e3


def throughput(stub, prompts: list[list[int]], sessions: int, n: int) -> dict:  # type: ignore[no-untyped-def]
    def one(k: int) -> tuple[int, float]:
        session = stub.OpenSession(pb.OpenSessionRequest()).session_id
        ids, _, ms = relay(stub, session_id=session, delta_ids=prompts[k % len(prompts)], max_new_tokens=n)
        stub.CloseSession(pb.CloseSessionRequest(session_id=session))
        return len(ids), ms

    relay(stub, delta_ids=prompts[0], max_new_tokens=2)  # warm
    started = time.perf_counter()
    with ThreadPoolExecutor(sessions) as pool:
        results = list(pool.map(one, range(sessions)))
    wall = time.perf_counter() - started
    latencies = sorted(ms for _, ms in results)
    return {
        "sessions": sessions,
        "tokens_per_s": sum(t for t, _ in results) / wall,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
    }


def overhead(stub, prompt: list[int]) -> float:  # type: ignore[no-untyped-def]
    gaps = []
    for _ in range(10):
        _, done, ms = relay(stub, delta_ids=prompt, max_new_tokens=4)
        gaps.append(ms - done.timings.total_ms)
    return statistics.median(gaps)


def computed_ratio(stub, prompt: list[int], between: list[int]) -> float:  # type: ignore[no-untyped-def]
    """KV the cloud computed ÷ the answer's final context. Per relay it computes the prefilled tokens
    and all generated tokens but the last (sampled, fed next time), so 1.0 = nothing twice."""
    session = stub.OpenSession(pb.OpenSessionRequest()).session_id
    context_len, computed, delta, relays = 0, 0, list(prompt), 5
    for _ in range(relays):
        _, done, _ = relay(stub, session_id=session, context_len=context_len, delta_ids=delta, max_new_tokens=12)
        computed += done.usage.prompt_tokens + done.usage.completion_tokens - 1
        context_len, delta = done.context_len, list(between)  # the SLM writes on, then calls again
    return computed / (context_len - 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="transformers,vllm")
    parser.add_argument("--llm", default="qwen2.5-coder-1.5b-instruct", help="model name or directory")
    parser.add_argument("--sessions", default="1,4,8,16")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--vllm-block-size", type=int, default=32, help="vLLM KV block size (tokens; CPU: a multiple of 32)"
    )
    args = parser.parse_args()
    from tokenizers import Tokenizer

    from cloud.cli import resolve_llm_dir

    model_dir = resolve_llm_dir(args.llm, None)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    prompts = [tok.encode(p).ids for p in PROMPTS]
    between = tok.encode(" So the next step is to multiply the two numbers we found and then").ids
    results = []
    for engine in args.engines.split(","):
        with serve(engine, model_dir, args.vllm_block_size) as address, grpc.insecure_channel(address) as channel:
            stub = pb_grpc.RelayServiceStub(channel)
            rows = [throughput(stub, prompts, int(s), args.tokens) for s in args.sessions.split(",")]
            result = {"engine": engine, "throughput": rows, "overhead_ms": overhead(stub, prompts[0]),
                      "computed_over_context": computed_ratio(stub, prompts[1], between)}  # fmt: skip
            results.append(result)
            print(json.dumps(result), flush=True)
    print("\n| engine | sessions | tokens/s | × one session | p50 relay ms | p99 relay ms |")
    print("|---|---|---|---|---|---|")
    for r in results:
        one = r["throughput"][0]["tokens_per_s"]
        for row in r["throughput"]:
            print(f"| {r['engine']} | {row['sessions']} | {row['tokens_per_s']:.2f} | {row['tokens_per_s'] / one:.2f} "
                  f"| {row['p50_ms']:.0f} | {row['p99_ms']:.0f} |")  # fmt: skip
    print("\n| engine | per-relay overhead ms (median) | KV computed ÷ context, 5 relays |\n|---|---|---|")
    for r in results:
        print(f"| {r['engine']} | {r['overhead_ms']:.1f} | {r['computed_over_context']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
