"""The run's results: `summary.json`, a markdown table (`summary.md`) and a Pareto plot (`pareto.png`).

Everything is recomputed from `run.json` + `rows.jsonl`, so `relay eval report RUN_DIR` works on an
interrupted run and after adding policies. The query-level random router is not run: it is computed
from the SLM-alone (`never`) and LLM-alone (`cloud-only`) runs (`evaluation.baselines`), shown as a
line on the plot and as a computed row at the learned policy's share in the table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from common.errors import UserError
from evaluation import baselines
from evaluation.harness import LEARNED_POLICIES, load_run

SLM, LLM = "never", "cloud-only"
ROUTER_ROW = "random-query (computed)"


def build_summary(run_dir: Path, baseline: Path | None = None) -> dict:
    """Per-policy summaries plus the router baseline and each policy's comparison with it.

    `baseline`: another run directory over the same problems (e.g. the bundled SLM, when this run
    evaluates a trained one). Its policies are listed with a `base:` prefix, and its `never` and
    `cloud-only` are the SLM and LLM ends that gap and router figures are measured against."""
    manifest, policies = load_run(run_dir)
    ends = (SLM, LLM)
    if baseline is not None:
        base_manifest, base_policies = load_run(baseline)
        if base_manifest["problem_ids"] != manifest["problem_ids"]:
            raise UserError(f"baseline {baseline} evaluates other problems than {run_dir}")
        policies = {f"base:{k}": v for k, v in base_policies.items()} | policies
        ends = (f"base:{SLM}", f"base:{LLM}")
    out: dict = {
        "benchmark": manifest["benchmark"],
        "slice": manifest["slice"],
        "problems": len(manifest["problem_ids"]),
        "policies": policies,
        "router": None,
        "comparisons": {},
    }
    slm, llm = policies.get(ends[0]), policies.get(ends[1])
    if slm and slm["graded"]:  # problem by problem against the SLM alone needs no LLM run
        out["comparisons"] = {label: {"vs_slm": baselines.paired(s, slm)} for label, s in policies.items()}
    if slm and llm and slm["graded"] and llm["graded"]:
        share = next((s["llm_share"] for label, s in policies.items() if _learned(label)), None)
        out["router"] = {
            "curve": baselines.router_curve(slm, llm, points=201),
            "at_learned_share": None if share is None else baselines.router_at_share(share, slm, llm),
        }
        for label, s in policies.items():
            out["comparisons"][label] |= baselines.compare(s, slm, llm)
    return out


def _learned(label: str) -> bool:
    """A decision learned from data, run in this run (not the baseline's): the router is shown at
    the share of the first one."""
    return label.partition("@")[0] in LEARNED_POLICIES


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _signed_pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f}"


COLUMNS = (
    "policy | n | errors | accuracy % | LLM share % | relays/ans | KB up/ans | KB down/ans | latency s/ans"
    " | edge s/ans | cloud s/ans | $ per 1k ans | LLM-only $ per 1k | gap recovered % | vs router pp"
    " | vs SLM fixed/broken (95% CI pp) | hit limit %"
)


def _policy_row(label: str, s: Mapping, cmp: Mapping) -> str:
    cells = [
        f"`{label}`",
        f"{s['n']}",
        f"{s['errors']}",
        _pct(s["accuracy"]),
        f"{100 * s['llm_share']:.2f}",
        f"{s['relays_per_answer']:.2f}",
        f"{s['bytes_up_per_answer'] / 1e3:.2f}",
        f"{s['bytes_down_per_answer'] / 1e3:.2f}",
        f"{s['latency_s_mean']:.1f}",
        f"{s['edge_s_per_answer']:.1f}",
        f"{s['cloud_s_per_answer']:.1f}",
        f"{1000 * s['money_per_answer']:.4f}",
        f"{1000 * s['money_llm_only_per_answer']:.4f}",
        _pct(cmp.get("gap_recovered")),
        _signed_pct(cmp.get("advantage_over_router")),
        _paired_cell(cmp.get("vs_slm")),
        _pct(s.get("hit_limit_share")),
    ]
    return "| " + " | ".join(cells) + " |"


def _paired_cell(p: Mapping | None) -> str:
    if not p or not (p["fixed"] or p["broken"]):
        return "–"
    low, high = p["ci95"]
    return f"+{p['fixed']}/−{p['broken']} ({100 * low:+.1f} … {100 * high:+.1f})"


def summary_markdown(summary: Mapping) -> str:
    """The results table (one row per policy, plus the computed router row)."""
    lines = [
        f"{summary['benchmark']} · slice `{summary['slice']}` · {summary['problems']} problems",
        "",
        "| " + COLUMNS + " |",
        "|" + "---|" * len(COLUMNS.split(" | ")),
    ]
    for label, s in summary["policies"].items():
        lines.append(_policy_row(label, s, summary["comparisons"].get(label, {})))
    router = summary["router"] and summary["router"]["at_learned_share"]
    if router:
        empty = "–"
        lines.append(
            f"| {ROUTER_ROW} | – | – | {_pct(router['accuracy'])} | {100 * router['llm_share']:.2f} | "
            + " | ".join([empty] * 6)
            + f" | {1000 * router['money_per_answer']:.4f} | – | – | – | – | – |"
        )
    lines += [
        "",
        "accuracy over graded rows; errors counted apart. LLM share = LLM-written answer tokens / all "
        "answer tokens. gap recovered = (acc − acc_SLM)/(acc_LLM − acc_SLM). vs router = accuracy minus "
        "the query-level random router's at the same LLM share (percentage points). vs SLM = problems "
        "this policy got right and the SLM alone wrong / the reverse, and a 95% interval for the accuracy "
        "difference (paired). hit limit = answers cut by the answer-token limit.",
    ]
    return "\n".join(lines) + "\n"


def pareto_plot(summary: Mapping, path: Path) -> Path:
    """Accuracy against LLM-token share and against money; each policy a point, the router a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_share, ax_money) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    router = summary["router"]
    if router:
        curve = router["curve"]
        acc = [100 * c["accuracy"] for c in curve]
        ax_share.plot([100 * c["llm_share"] for c in curve], acc, "--", color="grey", label="random router (query)")
        ax_money.plot([1000 * c["money_per_answer"] for c in curve], acc, "--", color="grey")
    for label, s in summary["policies"].items():
        if not s["graded"]:
            continue
        y = 100 * s["accuracy"]
        for ax, x in ((ax_share, 100 * s["llm_share"]), (ax_money, 1000 * s["money_per_answer"])):
            ax.scatter([x], [y], zorder=3)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    # Relay policies sit near 1% and the LLM alone at 100%: linear up to 1%, logarithmic above.
    ax_share.set_xscale("symlog", linthresh=1.0)
    ax_share.set(xlabel="LLM-token share (%, log above 1)", ylabel="accuracy (%)")
    top_money = max((1000 * s["money_per_answer"] for s in summary["policies"].values()), default=0.0)
    if top_money > 0:  # the same view for money: linear near zero, logarithmic above 1% of the top
        ax_money.set_xscale("symlog", linthresh=top_money / 100)
    ax_money.set(xlabel="money (USD per 1000 answers)", ylabel="accuracy (%)")
    title = f"{summary['benchmark']} ({summary['slice']}, {summary['problems']} problems)"
    fig.suptitle(title)
    if router:
        ax_share.legend(loc="upper left", fontsize=8)
    for ax in (ax_share, ax_money):
        ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(run_dir: Path, baseline: Path | None = None) -> dict:
    """Write summary.json, summary.md and pareto.png into the run directory; return the summary."""
    summary = build_summary(run_dir, baseline)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (run_dir / "summary.md").write_text(summary_markdown(summary))
    pareto_plot(summary, run_dir / "pareto.png")
    return summary
