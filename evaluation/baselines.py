"""Baseline arithmetic: the query-level random router, token-level random rates, gap recovered.

The paper compares RelayLLM with a *query-level random router* that sends a fraction p of the
questions to the LLM and the rest to the SLM (METHOD.md §5.2). Its accuracy interpolates linearly
between the two single-model runs, `acc(p) = acc_slm + p·(acc_llm − acc_slm)`, and the paper takes
its cost (LLM-token share) to be p, which assumes both models write answers of equal length.
We measure both runs, so we use their mean answer lengths: the router's expected LLM-token share is
`p·L_llm / (p·L_llm + (1−p)·L_slm)`; with equal lengths this is exactly the paper's `share = p`.
Money interpolates per answer: `(1−p)·money_slm + p·money_llm`.

Reproducing the paper's headline numbers (1.7B student, Qwen3-8B teacher; Table 1 averages):

>>> round(router_p_to_match(49.52, 42.50, 54.12), 3)          # router needs 60.4% of the LLM
0.604
>>> round(cost_reduction(0.0107, router_p_to_match(49.52, 42.50, 54.12)), 3)   # "98.2%"
0.982
>>> round(49.52 - router_accuracy(0.0107, 42.50, 54.12), 2)   # "+6.9" at the same share
6.9
>>> round(gap_recovered(49.52, 42.50, 54.12), 3)              # "≈60%"
0.604

All functions are pure; the run summaries they read are the harness's dicts.
"""

from __future__ import annotations

from collections.abc import Mapping


def router_accuracy(p: float, acc_slm: float, acc_llm: float) -> float:
    """Expected accuracy when a fraction p of the questions goes to the LLM.

    >>> router_accuracy(0.25, 0.4, 0.8)
    0.5
    """
    return acc_slm + p * (acc_llm - acc_slm)


def router_share(p: float, len_slm: float = 1.0, len_llm: float = 1.0) -> float:
    """Expected LLM-token share of the router at routing probability p (answer lengths L).

    >>> router_share(0.5)                    # equal lengths: share = p (the paper)
    0.5
    >>> router_share(0.5, len_slm=300, len_llm=100)
    0.25
    """
    llm = p * len_llm
    total = llm + (1 - p) * len_slm
    return llm / total if total else 0.0


def router_p(share: float, len_slm: float = 1.0, len_llm: float = 1.0) -> float:
    """Routing probability whose expected LLM-token share is `share` (inverse of `router_share`).

    >>> router_p(0.25, len_slm=300, len_llm=100)
    0.5
    >>> router_p(0.0107)
    0.0107
    """
    denom = len_llm * (1 - share) + share * len_slm
    return share * len_slm / denom if denom else 0.0


def router_money(p: float, money_slm: float, money_llm: float) -> float:
    """Expected money per answer of the router (per-answer money of the two single-model runs)."""
    return (1 - p) * money_slm + p * money_llm


def gap_recovered(acc: float, acc_slm: float, acc_llm: float) -> float | None:
    """Fraction of the SLM→LLM accuracy gap a method closes; None when there is no gap.

    >>> gap_recovered(0.75, 0.5, 1.0)
    0.5
    >>> gap_recovered(0.6, 0.5, 0.5) is None
    True
    """
    gap = acc_llm - acc_slm
    return (acc - acc_slm) / gap if gap else None


def router_p_to_match(acc: float, acc_slm: float, acc_llm: float) -> float | None:
    """Routing probability at which the router reaches `acc` (may exceed 1: the router cannot)."""
    return gap_recovered(acc, acc_slm, acc_llm)


def cost_reduction(share: float, router_share_matched: float | None) -> float | None:
    """1 − (a method's LLM share) / (the share a router needs for the same accuracy)."""
    if not router_share_matched or router_share_matched <= 0:
        return None
    return 1 - share / router_share_matched


def random_token_rate(share: float, fixed_n: int) -> float:
    """Per-token call probability r of the `random` policy that gives an expected LLM share `share`.

    Each SLM token calls with probability r and a call brings `fixed_n` LLM tokens, so per SLM token
    the LLM writes r·n tokens on average and share = r·n / (1 + r·n), i.e. r = s / (n·(1 − s)).
    The per-answer relay limit and the token budget cut long answers, so the measured share can be
    lower; the run reports the measured share next to the target.

    >>> round(random_token_rate(0.2, 16), 6)
    0.015625
    >>> round(random_token_share(0.015625, 16), 6)
    0.2
    """
    if not 0 <= share < 1:
        raise ValueError(f"share must be in [0, 1), got {share}")
    return min(1.0, share / (fixed_n * (1 - share)))


def random_token_share(rate: float, fixed_n: int) -> float:
    """Expected LLM share of the `random` policy at per-token rate `rate` (inverse of the above)."""
    x = rate * fixed_n
    return x / (1 + x)


def router_curve(slm: Mapping, llm: Mapping, points: int = 21) -> list[dict]:
    """The router as a line for plots: (share, accuracy, money per answer) for p in [0, 1]."""
    out = []
    for i in range(points):
        p = i / (points - 1)
        out.append(
            {
                "p": p,
                "llm_share": router_share(p, slm["answer_tokens_mean"], llm["answer_tokens_mean"]),
                "accuracy": router_accuracy(p, slm["accuracy"], llm["accuracy"]),
                "money_per_answer": router_money(p, slm["money_per_answer"], llm["money_per_answer"]),
            }
        )
    return out


def router_at_share(share: float, slm: Mapping, llm: Mapping) -> dict:
    """The query-level random router evaluated at an LLM-token share (a computed baseline row)."""
    p = router_p(share, slm["answer_tokens_mean"], llm["answer_tokens_mean"])
    return {
        "p": p,
        "llm_share": share,
        "accuracy": router_accuracy(p, slm["accuracy"], llm["accuracy"]),
        "money_per_answer": router_money(p, slm["money_per_answer"], llm["money_per_answer"]),
    }


def compare(policy: Mapping, slm: Mapping, llm: Mapping) -> dict:
    """A policy against the two single-model runs and the router at the same share."""
    acc, share = policy["accuracy"], policy["llm_share"]
    at_share = router_at_share(share, slm, llm)
    p_match = router_p_to_match(acc, slm["accuracy"], llm["accuracy"])
    share_match = (
        None
        if p_match is None or not 0 <= p_match <= 1
        else router_share(p_match, slm["answer_tokens_mean"], llm["answer_tokens_mean"])
    )
    return {
        "gap_recovered": gap_recovered(acc, slm["accuracy"], llm["accuracy"]),
        "router_accuracy_at_share": at_share["accuracy"],
        "advantage_over_router": acc - at_share["accuracy"],
        "router_share_to_match": share_match,
        "cost_reduction_vs_router": cost_reduction(share, share_match),
    }


def paired(policy: Mapping, reference: Mapping) -> dict | None:
    """Problem by problem against a reference run over the same problems: how many answers the
    policy fixed and broke, and a 95 % interval for the accuracy difference (normal approximation
    on the paired differences). With 40-100 problems a few points either way is noise; this says
    how much.

    >>> r = paired({"outcomes": {"a": True, "b": True, "c": False}}, {"outcomes": {"a": False, "b": True, "c": True}})
    >>> (r["fixed"], r["broken"], r["diff"])
    (1, 1, 0.0)
    """
    mine, theirs = policy.get("outcomes"), reference.get("outcomes")
    if not mine or not theirs:
        return None
    common = sorted(mine.keys() & theirs.keys())
    if not common:
        return None
    diffs = [int(mine[k]) - int(theirs[k]) for k in common]
    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    half = 1.96 * (var / n) ** 0.5
    return {
        "n": n,
        "fixed": diffs.count(1),
        "broken": diffs.count(-1),
        "diff": mean,
        "ci95": [max(-1.0, mean - half), min(1.0, mean + half)],  # a difference of shares stays in [-1, 1]
    }
