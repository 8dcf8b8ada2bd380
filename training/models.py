"""The two models as training needs them, wrapping the project's own runtimes.

- `LocalSlm`: the SLM on onnxruntime (the edge's runtime), driven by the project's `RelayMachine`
  with the cloud off, so warm-up answers are decoded exactly as the app decodes them.
- `TeacherLlm`: the LLM in process through the cloud's `TransformersBackend` (same loading, same
  dtype choice), plus the one thing the cloud never needs: teacher-forced scores of a whole answer
  in one forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from common.errors import UserError
from edge.relay.commands import CommandMask
from edge.relay.machine import Finish, RelayMachine, TokenizerView
from edge.relay.settings import RelaySettings
from edge.runtime import OnnxSlm
from edge.vocab import Vocab
from training.insertion import TokenScore


def tokenizer_view(vocab: Vocab) -> TokenizerView:
    return TokenizerView(
        token_bytes=vocab.token_bytes,
        eos_ids=frozenset(vocab.eos_ids),
        encode=vocab.encode,
        mask=CommandMask(vocab.token_bytes),
    )


class LocalSlm:
    def __init__(self, onnx_dir: Path, threads: int | None = None) -> None:
        self.slm = OnnxSlm.load(onnx_dir, provider="auto", threads=threads, spin=False)
        self.vocab = Vocab.load(onnx_dir, vocab_size=self.slm.vocab_size)
        self.view = tokenizer_view(self.vocab)

    def generate(
        self, context: Sequence[int], max_new_tokens: int, temperature: float, seed: int
    ) -> tuple[list[int], str]:
        """The SLM alone (commands masked) after `context`; returns (answer ids, finish reason)."""
        settings = RelaySettings(
            policy="never", max_new_tokens=max_new_tokens, max_relays=0, temperature=temperature, seed=seed
        )
        machine = RelayMachine(list(context), self.view, settings, cloud_available=False)
        _, action = machine.start()
        first = True
        while not isinstance(action, Finish):
            try:
                logits = self.slm.prefill(action.feed) if first else self.slm.forward(action.feed)
            except Exception as exc:  # context full: end the answer where it is
                _, action = machine.stop("context_full", str(exc))
                break
            first = False
            _, action = machine.on_logits(logits)
        return list(machine.answer_ids), action.reason

    def greedy_predictions(self, context: Sequence[int], span: Sequence[int]) -> list[int]:
        """The SLM's argmax at each position of `span`, teacher-forced after `context`."""
        preds = [self.predict_first(context)]
        for tid in span[:-1]:
            preds.append(self.predict_next(tid))
        return preds

    def predict_first(self, context: Sequence[int]) -> int:
        """The SLM's greedy next token after `context` (starts a teacher-forced walk)."""
        return int(self.slm.prefill(list(context)).argmax())

    def predict_next(self, token: int) -> int:
        """Feed `token` (someone else's) and return the SLM's greedy choice for the next one."""
        return int(self.slm.forward([token]).argmax())


class TeacherLlm:
    def __init__(self, hf_dir: Path, device: str = "auto", threads: int | None = None) -> None:
        from cloud.backend import TransformersBackend

        self.backend = TransformersBackend.load(hf_dir, device=device, threads=threads)
        self.eos_ids = frozenset(self.backend.info.eos_ids)

    def score(self, context: Sequence[int], answer: Sequence[int]) -> list[TokenScore]:
        """For each answer token: the LLM's probability of it and its own top choice (one pass)."""
        import torch

        model = self.backend.model
        ids = torch.tensor([list(context) + list(answer)], device=model.device)
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, len(context) - 1 : -1].float()
        probs = torch.softmax(logits, dim=-1)
        top_p, top_id = probs.max(dim=-1)
        own = probs.gather(1, torch.tensor(list(answer), device=probs.device)[:, None])[:, 0]
        return [
            TokenScore(float(o), int(i), float(p))
            for o, i, p in zip(own.tolist(), top_id.tolist(), top_p.tolist(), strict=True)
        ]

    def greedy(self, context: Sequence[int], n: int) -> list[int]:
        """Up to `n` greedy tokens after `context` (the EOS token included if it comes)."""
        out: list[int] = []
        for tid in self.stream(context):
            out.append(tid)
            if len(out) >= n:
                break
        return out

    def stream(self, context: Sequence[int]) -> Iterator[int]:
        """Greedy tokens after `context`, one at a time, until EOS (inclusive) or the caller stops:
        a token is only computed when asked for."""
        cache = self.backend.new_cache()
        logits = self.backend.forward(cache, list(context))
        while True:
            tid = int(np.argmax(logits))
            yield tid
            if tid in self.eos_ids:
                return
            logits = self.backend.forward(cache, [tid])


def slm_output_matrix(hf_dir: Path) -> np.ndarray:
    """The SLM's output layer E ([vocab, hidden]): logits = E h (the call head needs it)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    layer = model.get_output_embeddings()
    if getattr(layer, "bias", None) is not None:
        raise UserError(f"{hf_dir}: the output layer has a bias; the call head needs logits = E h")
    return layer.weight.detach().numpy().copy()


def slm_token_bytes(hf_dir: Path) -> list[bytes]:
    return Vocab.load(hf_dir).token_bytes
