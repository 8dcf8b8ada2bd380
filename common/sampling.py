"""Pure next-token sampling over numpy logits, with an explicit seeded Generator.

temperature 0 is greedy (argmax, the seed is ignored). Otherwise: temperature, optional top-k and
top-p (nucleus), then one draw from `rng`. Also returns the top-1 probability, which the entropy
controller uses to decide when to call the cloud.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - float(np.max(logits))
    exp = np.exp(shifted)
    return exp / exp.sum()


def top1_probability(logits: np.ndarray) -> float:
    return float(softmax(logits).max())


def sample(
    logits: np.ndarray,
    rng: np.random.Generator,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
) -> int:
    if temperature <= 0.0:
        return int(np.argmax(logits))
    probs = softmax(logits.astype(np.float64) / temperature)  # float64: a tiny temperature must not overflow
    if top_k and top_k < probs.size:
        cutoff = np.partition(probs, -top_k)[-top_k]
        probs = np.where(probs >= cutoff, probs, 0.0)
    if top_p < 1.0:
        order = np.argsort(-probs)
        keep = np.cumsum(probs[order]) - probs[order] < top_p
        keep[0] = True  # the most likely token always stays (top_p = 0 is greedy, not empty)
        mask = np.zeros_like(probs, dtype=bool)
        mask[order[keep]] = True
        probs = np.where(mask, probs, 0.0)
    probs = probs / probs.sum()
    return int(rng.choice(probs.size, p=probs))


def log_probability(logits: np.ndarray, token: int) -> float:
    """log p(token) under softmax(logits) (temperature 1), reported with relayed tokens."""
    shifted = logits.astype(np.float64) - float(np.max(logits))
    return float(shifted[token] - np.log(np.exp(shifted).sum()))
