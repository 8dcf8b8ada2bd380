"""The exported SLM on onnxruntime against torch, on a tiny random model built locally."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from common.errors import UserError
from edge.detok import IncrementalDetokenizer
from edge.runtime import OnnxSlm
from edge.vocab import Vocab

PROMPT = [{"role": "user", "content": "Tom has 3 boxes with 4 apples. naïve café 你好 🙂"}]


@pytest.fixture(scope="module")
def torch_slm(tiny_pair: tuple[Path, Path]):
    return AutoModelForCausalLM.from_pretrained(tiny_pair[0], dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompt_ids(tiny_onnx: Path) -> list[int]:
    return Vocab.load(tiny_onnx).encode_chat(PROMPT)


def torch_greedy(model, ids: list[int], n: int, use_cache: bool) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()


def onnx_greedy(slm: OnnxSlm, ids: list[int], n: int) -> list[int]:
    slm.reset()
    logits, out = slm.forward(ids), []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = slm.forward([out[-1]])
    return out


def test_logits_close_to_torch(tiny_onnx: Path, torch_slm, prompt_ids: list[int]) -> None:
    slm = OnnxSlm.load(tiny_onnx, provider="cpu")
    with torch.no_grad():
        expected = torch_slm(torch.tensor([prompt_ids])).logits[0, -1].numpy()
    np.testing.assert_allclose(slm.forward(prompt_ids), expected, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_ids_equal_torch_with_and_without_cache(
    tiny_onnx: Path, torch_slm, prompt_ids: list[int], use_cache: bool
) -> None:
    slm = OnnxSlm.load(tiny_onnx, provider="cpu")
    assert onnx_greedy(slm, prompt_ids, 24) == torch_greedy(torch_slm, prompt_ids, 24, use_cache)


def test_chunk_append_equals_one_shot_prefill(tiny_onnx: Path, prompt_ids: list[int]) -> None:
    slm = OnnxSlm.load(tiny_onnx, provider="cpu")
    foreign = list(range(40, 73))  # a 33-token chunk "from the LLM"
    one_shot = slm.forward(prompt_ids + foreign)
    slm.reset()
    slm.forward(prompt_ids)
    appended = slm.forward(foreign)
    assert slm.context_len == len(prompt_ids) + len(foreign)
    np.testing.assert_allclose(appended, one_shot, atol=1e-4, rtol=1e-4)


def test_prefill_in_small_chunks_equals_one_shot(tiny_onnx: Path, prompt_ids: list[int]) -> None:
    slm = OnnxSlm.load(tiny_onnx, provider="cpu")
    one_shot = slm.forward(prompt_ids)
    slm.reset()
    slm.prefill_chunk = 5
    np.testing.assert_allclose(slm.forward(prompt_ids), one_shot, atol=1e-4, rtol=1e-4)


def test_int8_export_runs_and_mostly_agrees(tiny_onnx: Path, tiny_onnx_int8: Path, prompt_ids: list[int]) -> None:
    fp32 = OnnxSlm.load(tiny_onnx, provider="cpu").forward(prompt_ids)
    int8 = OnnxSlm.load(tiny_onnx_int8, provider="cpu").forward(prompt_ids)
    assert int8.shape == fp32.shape
    assert np.corrcoef(fp32, int8)[0, 1] > 0.95


def test_context_overflow_is_a_user_error(tiny_onnx: Path) -> None:
    slm = OnnxSlm.load(tiny_onnx, provider="cpu")
    with pytest.raises(UserError, match="context full"):
        slm.forward([1] * (slm.max_context + 1))


def test_provider_is_reported(tiny_onnx: Path) -> None:
    assert OnnxSlm.load(tiny_onnx, provider="cpu").provider == "CPUExecutionProvider"


def test_missing_model_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no ONNX model"):
        OnnxSlm.load(tmp_path)


def test_detokenizer_never_splits_utf8(tiny_onnx: Path) -> None:
    vocab = Vocab.load(tiny_onnx)
    text = "naïve café 你好 🙂🚀 ∑√2 Zürich 東京"
    ids = vocab.encode(text)
    detok = IncrementalDetokenizer(vocab.token_bytes, vocab.special_ids)
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert any(p == "" for p in pieces)  # some token ended mid-character and was held back


def test_vocab_without_tokenizer_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has no tokenizer"):
        Vocab.load(tmp_path)


def test_prefill_reuses_the_cached_prefix_and_matches_a_fresh_prefill(tiny_onnx: Path, prompt_ids: list[int]) -> None:
    slm = OnnxSlm.load(tiny_onnx, provider="cpu")
    slm.prefill(prompt_ids + [50, 51, 52])  # last turn: prompt + an answer
    runs: list[int] = []
    original = slm._run
    slm._run = lambda ids: runs.append(len(ids)) or original(ids)  # count computed tokens
    next_turn = prompt_ids + [50, 51, 60, 61]  # shares the prompt and two answer tokens
    reused = slm.prefill(next_turn)
    assert sum(runs) == 2 and slm.ids == next_turn
    fresh = OnnxSlm.load(tiny_onnx, provider="cpu").prefill(next_turn)
    np.testing.assert_allclose(reused, fresh, atol=1e-4, rtol=1e-4)
    assert slm.prefill(next_turn) is not None and sum(runs) == 3  # identical input: one token rerun
