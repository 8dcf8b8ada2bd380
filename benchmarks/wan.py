"""`relay bench wan`: cost per query over a slow link, relay against LLM-only on the same link.

The cloud serves in one network namespace, the edge answers in another; a veth pair joins them,
shaped to `--rate-mbit` with tc tbf in both directions. Kernels here have no netem, so latency and
loss come from benchmarks/delay_proxy.py on the edge side (loss is emulated as a retransmission
timeout with head-of-line blocking, not as dropped packets). Profiles:

    loopback         the edge in the cloud's namespace, over 127.0.0.1 (no shaping)
    wan-20ms         10 Mbit/s, 20 ms round trip
    wan-80ms         10 Mbit/s, 80 ms round trip
    wan-80ms-loss1   10 Mbit/s, 80 ms round trip, 1 % of chunks wait one RTO

Per answer: network time (relay round trips minus the cloud's compute), bytes, edge compute,
cloud compute, money. Writes rows.jsonl, summary.md and wan.png under --out. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.delay_proxy import LinkProfile
from benchmarks.netns import WanLink, problem
from common.errors import UserError
from common.ready import read_ready_address

PROFILES = {
    "loopback": None,
    "wan-20ms": LinkProfile("wan-20ms", delay_ms=10),
    "wan-80ms": LinkProfile("wan-80ms", delay_ms=40),
    "wan-80ms-loss1": LinkProfile("wan-80ms-loss1", delay_ms=40, loss=0.01),
}
CLOUD_PORT = 50051


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks that need the whole system")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    wan = bench_sub.add_parser("wan", help="cost per query over shaped links (network namespaces; root)")
    wan.add_argument("--profiles", default=",".join(PROFILES), help=f"comma list of {', '.join(PROFILES)}")
    wan.add_argument("--policies", default="entropy,cloud-only", help="edge policies; cloud-only is LLM-only")
    wan.add_argument("--questions", type=int, default=3, help="GSM8K dev problems (default 3)")
    wan.add_argument("--prompt", action="append", help="use these prompts instead of GSM8K (repeatable)")
    wan.add_argument("--max-new-tokens", type=int, default=160)
    wan.add_argument("--rate-mbit", type=float, default=10.0)
    wan.add_argument("--llm", help="cloud model (default: the edge pair's LLM)")
    wan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="edge config override")
    wan.add_argument("--out", type=Path, default=Path("runs/bench-wan"))
    wan.add_argument("--startup-timeout", type=float, default=900.0)
    wan.add_argument("--report", action="store_true", help="only rewrite summary.md and wan.png from --out's rows")
    wan.set_defaults(func=run_wan)


def run_wan(args: argparse.Namespace) -> int:
    if args.report:
        return report(args)
    if reason := problem():
        raise UserError(f"relay bench wan cannot run here: {reason}")
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    if unknown := [p for p in profiles if p not in PROFILES]:
        raise UserError(f"unknown profile(s) {', '.join(unknown)}; known: {', '.join(PROFILES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    prompts_file = args.out / "prompts.json"
    prompts_file.write_text(json.dumps(args.prompt or gsm8k_prompts(args.questions)))
    llm = args.llm or default_llm(args.set)
    token = secrets.token_urlsafe(16)
    env = {**os.environ, "RELAY_CLOUD_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    rows_file = args.out / "rows.jsonl"
    rows_file.write_text("")
    with WanLink(rate_mbit=args.rate_mbit) as link, cloud_server(link, llm, env, args) as _:
        for name in profiles:
            for row in run_profile(link, name, PROFILES[name], prompts_file, env, args):
                with rows_file.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
    return report(args)


def report(args: argparse.Namespace) -> int:
    rows_file = args.out / "rows.jsonl"
    if not rows_file.is_file():
        raise UserError(f"no rows at {rows_file} (run `relay bench wan --out {args.out}` first)")
    rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    profiles = [p for p in PROFILES if any(r["profile"] == p for r in rows)]
    table = summary_table(rows, profiles, args)
    (args.out / "summary.md").write_text(table)
    plot(rows, profiles, args.out / "wan.png")
    print(table)
    print(f"rows: {rows_file}  plot: {args.out / 'wan.png'}")
    return 0


def gsm8k_prompts(count: int) -> list[str]:
    from evaluation.data import load_problems
    from evaluation.prompts import messages_for

    return [messages_for(p.question)[-1]["content"] for p in load_problems("gsm8k", "dev", count)]


def default_llm(overrides: list[str]) -> str:
    from edge.config import load_edge_config
    from models.registry import load_registry

    config = load_edge_config(None, overrides)
    return config.models.llm or load_registry().pair(config.models.pair)[1].llm


@contextmanager
def cloud_server(link: WanLink, llm: str, env: dict, args: argparse.Namespace) -> Iterator[None]:
    log = args.out / "cloud.log"
    cmd = [sys.executable, "-m", "relaycli.main", "cloud", "serve", "--host", "0.0.0.0", "--port", str(CLOUD_PORT),
           "--llm", llm, "--set", "device=cpu"]  # fmt: skip
    with log.open("ab") as err:
        child = link.popen("cloud", cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
    try:
        if read_ready_address(child, args.startup_timeout) is None:
            raise UserError(f"the cloud did not start within {args.startup_timeout:.0f} s (log: {log})")
        yield
    finally:
        child.terminate()
        child.wait(30)


def run_profile(
    link: WanLink, name: str, profile: LinkProfile | None, prompts: Path, env: dict, args: argparse.Namespace
) -> Iterator[dict]:
    """Rows of one profile as the edge client produces them (written as they come)."""
    side, proxy = "cloud", None
    address = f"127.0.0.1:{CLOUD_PORT}"
    if profile is not None:
        side = "edge"
        proxy = link.popen(
            "edge",
            [sys.executable, "-m", "benchmarks.delay_proxy", "--to", f"{link.cloud_ip}:{CLOUD_PORT}",
             "--delay-ms", str(profile.delay_ms), "--loss", str(profile.loss)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        address = read_ready_address(proxy, 30, prefix="RELAY-PROXY-READY")
        if address is None:
            proxy.kill()
            raise UserError("the delay proxy did not start")
    cmd = [sys.executable, "-m", "benchmarks.wan_client", "--cloud", address, "--prompts", str(prompts),
           "--policies", args.policies, "--profile", name, "--max-new-tokens", str(args.max_new_tokens)]  # fmt: skip
    for override in args.set:
        cmd += ["--set", override]
    print(f"{name}: {len(json.loads(prompts.read_text()))} prompts x {args.policies}", flush=True)
    try:
        yield from client_rows(link, side, cmd, env)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)


def client_rows(link: WanLink, side: str, cmd: list[str], env: dict) -> Iterator[dict]:
    with tempfile.TemporaryFile("w+") as err:
        child = link.popen(side, cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        for line in child.stdout:
            if line.startswith("{"):
                yield json.loads(line)
        if child.wait() != 0:
            err.seek(0)
            tail = err.read().strip().splitlines()[-1:] or ["(no output)"]
            raise UserError(f"the edge client failed: {tail[0]}")


def summary_table(rows: list[dict], profiles: list[str], args: argparse.Namespace) -> str:
    """Medians per profile and policy, and each policy's time and money against LLM-only."""
    fields = ("wall_ms", "network_ms", "edge_ms", "cloud_ms", "bytes", "money", "relays", "llm_tokens")
    lines = [
        f"Medians per answer ({len(rows)} answers in all); "
        f"link {args.rate_mbit:g} Mbit/s tbf; latency and loss from the delay proxy (loss = one RTO of "
        "head-of-line blocking per 'lost' chunk, not netem).",
        "",
        "| profile | policy | answer s | network s | edge s | cloud s | bytes | $ / 1k answers | relays "
        "| LLM tokens | time vs LLM-only | $ vs LLM-only |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for profile in profiles:
        cells = {}
        for policy in args.policies.split(","):
            chosen = [r for r in rows if r["profile"] == profile and r["policy"] == policy]
            if chosen:
                cells[policy] = {f: statistics.median(r[f] for r in chosen) for f in fields}
        base = cells.get("cloud-only")
        for policy, m in cells.items():
            vs_time = f"{m['wall_ms'] / base['wall_ms']:.2f}×" if base and policy != "cloud-only" else "—"
            vs_money = (
                f"{m['money'] / base['money']:.3f}×" if base and base["money"] and policy != "cloud-only" else "—"
            )
            seconds = " | ".join(f"{m[f] / 1e3:.2f}" for f in ("wall_ms", "network_ms", "edge_ms", "cloud_ms"))
            lines.append(
                f"| {profile} | {policy} | {seconds} | {m['bytes']:.0f} | {m['money'] * 1e3:.4f} | "
                f"{m['relays']:.0f} | {m['llm_tokens']:.0f} | {vs_time} | {vs_money} |"
            )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], profiles: list[str], path: Path) -> None:
    """Left: where an answer's time goes (stacked medians). Right: the network part alone, in ms,
    which the compute of a CPU cloud dwarfs on the left."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = sorted({r["policy"] for r in rows}, key=lambda p: p == "cloud-only")
    width = 0.8 / max(len(policies), 1)
    colors = {"network_ms": "#d62728", "edge_ms": "#1f77b4", "cloud_ms": "#ff7f0e"}

    def median(profile: str, policy: str, part: str) -> float:
        chosen = [r[part] for r in rows if r["profile"] == profile and r["policy"] == policy]
        return statistics.median(chosen) if chosen else 0.0

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    for i, policy in enumerate(policies):
        xs = [k + i * width for k in range(len(profiles))]
        bottom = [0.0] * len(profiles)
        for part, color in colors.items():
            heights = [median(p, policy, part) / 1e3 for p in profiles]
            label = f"{part.removesuffix('_ms')} ({policy})"
            left.bar(xs, heights, width, bottom=bottom, color=color, alpha=1.0 - 0.45 * i, label=label)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        right.bar(xs, [median(p, policy, "network_ms") for p in profiles], width, color=colors["network_ms"],
                  alpha=1.0 - 0.45 * i, label=policy)  # fmt: skip
    for ax in (left, right):
        ax.set_xticks([k + width * (len(policies) - 1) / 2 for k in range(len(profiles))], profiles, fontsize=8)
    left.set_ylabel("seconds per answer (median)")
    left.set_title("Where an answer's time goes", fontsize=10)
    left.legend(fontsize=7, ncol=2)
    right.set_ylabel("network ms per answer (median)")
    right.set_title("Network time alone (relay round trips − cloud compute)", fontsize=10)
    right.legend(fontsize=7)
    fig.suptitle("Relay vs LLM-only over the same link", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
