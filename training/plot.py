"""Training curves from a `metrics.jsonl` (one log record per line) into one PNG."""

from __future__ import annotations

from pathlib import Path

from training.warmup import read_jsonl

PANELS = (
    ("reward", ("reward",)),
    ("accuracy", ("relay/accuracy",)),
    ("LLM-token share", ("relay/llm_share",)),
    ("relays per answer", ("relay/relays_per_answer",)),
    (
        "reward per scenario",
        ("relay/reward_student_solvable", "relay/reward_teacher_dependent", "relay/reward_teacher_unsolvable"),
    ),
    ("KL", ("kl",)),
    ("loss", ("loss",)),
)


def plot_curves(metrics: Path, png: Path) -> Path | None:
    rows = [r for r in read_jsonl(metrics) if "step" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, (title, keys) in zip(axes.flat, PANELS, strict=False):
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points, strict=True), marker=".", label=key.split("/")[-1])
        ax.set_title(title)
        ax.set_xlabel("step")
        if len(keys) > 1:
            ax.legend(fontsize=7)
    axes.flat[-1].axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png
