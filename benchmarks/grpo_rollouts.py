"""GRPO rollout throughput: a question's G answers one by one (batch 1) vs in lockstep (one
batched policy forward), side by side in one run, on the real SLM in torch fp32.

    python -m benchmarks.grpo_rollouts --group 6 --tokens 64 --repeats 2

Sampling at temperature 1 with the `never` policy (no cloud), so only the policy's decoding is
measured; answers stop at EOS or `--tokens`. Prints tokens/s of both and their ratio (median).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--slm", default="qwen2.5-coder-0.5b-instruct")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from edge.relay.driver import RelayEngine
    from edge.relay.settings import RelaySettings
    from edge.vocab import Vocab
    from models.supply import ensure_model
    from training.lockstep import LockstepBatcher, run_lockstep
    from training.rollout import TorchSlm, run_rollout

    slm_dir = ensure_model(args.slm)
    vocab = Vocab.load(slm_dir)
    model = AutoModelForCausalLM.from_pretrained(slm_dir, dtype=torch.float32).eval()
    messages = [
        {"role": "user", "content": "A baker fills 5 trays with 12 muffins each and sells 38. How many are left?"}
    ]
    settings = [
        RelaySettings(policy="never", temperature=1.0, max_new_tokens=args.tokens, seed=i) for i in range(args.group)
    ]

    def one_by_one() -> int:
        return sum(
            len(run_rollout(RelayEngine(TorchSlm(model), vocab, None), messages, s).completion_ids) for s in settings
        )

    def lockstep() -> int:
        batcher = LockstepBatcher(model, args.group, pad_id=vocab.eos_ids[0])
        jobs = [lambda i: run_rollout(RelayEngine(batcher.slot(i), vocab, None), messages, settings[i])] * args.group
        return sum(len(r.completion_ids) for r in run_lockstep(jobs, batcher))

    rates: dict[str, list[float]] = {"batch 1": [], "lockstep": []}
    for _ in range(args.repeats):
        for name, fn in (("batch 1", one_by_one), ("lockstep", lockstep)):
            t0 = time.perf_counter()
            tokens = fn()
            rates[name].append(tokens / (time.perf_counter() - t0))
    b1, ls = (statistics.median(rates[k]) for k in ("batch 1", "lockstep"))
    print(
        f"G = {args.group}, <= {args.tokens} tokens per answer, {args.repeats} repeats,"
        f" torch threads {torch.get_num_threads()}"
    )
    print("| rollouts | tokens/s (median) |\n|---|---|")
    print(f"| one by one, batch 1 | {b1:.1f} |\n| lockstep, batch {args.group} | {ls:.1f} |")
    print(f"lockstep / batch 1: {ls / b1:.2f}x")


if __name__ == "__main__":
    main()
