"""The call head: a learned decision to call, beside a frozen SLM (policy `head`).

A logistic model of "the LLM would strongly disagree with the SLM's next token" on what the SLM
knows at that point: its final hidden state h, the log of its top-1 probability and its entropy.
Trained by `relay train head` (training/call_head.py) on the SLM's own answers scored by the LLM.

The edge runtime only sees logits, and it does not need more: the SLM's output layer is linear,
logits = E h, with E of full column rank, so a linear function of h is one of the logits,
w·h = v·logits with v = E (EᵀE)⁻¹ w. The head is shipped as that vocabulary-sized direction v,
and scoring a token is one dot product next to the softmax the machine already takes.

Pure numpy; the file is an `.npz` with the arrays and a JSON line of metadata.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import UserError

FORMAT = "relayllm-call-head/1"


@dataclass(frozen=True)
class CallHead:
    direction: np.ndarray
    """float32 [vocab]: the hidden-state weights carried onto the logits."""
    w_log_top1: float
    w_entropy: float
    bias: float
    meta: dict = field(default_factory=dict)
    """slm (whose hidden space this is), data, held-out figures."""

    @property
    def digest(self) -> str:
        """Identifies the head's weights (evaluation keys its rows by it)."""
        scalars = np.array([self.w_log_top1, self.w_entropy, self.bias], dtype=np.float64)
        return hashlib.sha256(self.direction.tobytes() + scalars.tobytes()).hexdigest()[:12]

    def features(self, logits: np.ndarray) -> tuple[float, float, float]:
        """(v·logits, log top-1 probability, entropy) of one next-token distribution."""
        z = logits.astype(np.float64) - float(logits.max())
        e = np.exp(z)
        total = float(e.sum())
        log_total = float(np.log(total))
        entropy = log_total - float(e @ z) / total
        return float(self.direction @ logits.astype(np.float32)), -log_total, entropy

    def probability(self, logits: np.ndarray) -> float:
        if logits.shape[-1] != self.direction.shape[0]:
            raise UserError(
                f"call head is for a vocabulary of {self.direction.shape[0]}, the SLM has {logits.shape[-1]}"
            )
        linear, log_top1, entropy = self.features(logits)
        score = linear + self.w_log_top1 * log_top1 + self.w_entropy * entropy + self.bias
        return float(1.0 / (1.0 + np.exp(-np.clip(score, -60.0, 60.0))))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        scalars = np.array([self.w_log_top1, self.w_entropy, self.bias], dtype=np.float64)
        meta = json.dumps({"format": FORMAT, **self.meta})
        np.savez_compressed(tmp, direction=self.direction.astype(np.float32), scalars=scalars, meta=np.array(meta))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> CallHead:
        try:
            with np.load(path) as z:
                direction, scalars, meta = z["direction"], z["scalars"], json.loads(str(z["meta"]))
        except FileNotFoundError:
            raise UserError(f"no call head at {path} (train one with `relay train head`)") from None
        except (OSError, KeyError, ValueError) as exc:
            raise UserError(f"{path} is not a call head ({type(exc).__name__}: {exc})") from None
        if meta.get("format") != FORMAT or direction.ndim != 1 or scalars.shape != (3,):
            raise UserError(f"{path} is not a {FORMAT} file")
        w_top1, w_entropy, bias = (float(x) for x in scalars)
        return cls(direction.astype(np.float32), w_top1, w_entropy, bias, meta)


def direction_from_hidden(weights: np.ndarray, output_matrix: np.ndarray) -> np.ndarray:
    """v with v·(E h) == w·h for every h: v = E (EᵀE)⁻¹ w (E: [vocab, hidden], full column rank)."""
    e = output_matrix.astype(np.float64)
    return (e @ np.linalg.solve(e.T @ e, weights.astype(np.float64))).astype(np.float32)
