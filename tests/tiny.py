"""Tiny models built locally for the offline test suite: a real byte-level BPE tokenizer trained
on a small corpus (with ChatML specials and a chat template) and random-weight Qwen2 decoders.

Nothing is downloaded. The SLM and LLM share the tokenizer, as the real pair does.
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Tom has 3 boxes with 4 apples in each box. He eats 2 apples. How many are left?",
    "Let me think step by step. 3 * 4 = 12, and 12 - 2 = 10. The answer is \\boxed{10}.",
    "I am not sure here <call>16</call> so I ask for help. <call> 8 </call> then <call>0</call>.",
    "naïve café 你好 🙂 — résumé, Zürich, 東京, emoji 🚀🔥 and math ∑ ∫ √2 ≈ 1.414",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "The quick brown fox jumps over the lazy dog. 0123456789 +-*/=<>()[]{}",
] * 20


def build_tokenizer(out_dir: Path, vocab_size: int = 400) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)


def build_model(out_dir: Path, tokenizer_dir: Path, *, seed: int, hidden: int, layers: int) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config).eval()
    # Spread the random logits so greedy decoding is not a tie-break lottery between backends.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    gen = {"eos_token_id": config.eos_token_id, "do_sample": False}
    (out_dir / "generation_config.json").write_text(json.dumps(gen))
    return out_dir


def build_pair(root: Path) -> tuple[Path, Path]:
    tok_dir = root / "tokenizer"
    build_tokenizer(tok_dir)
    slm = build_model(root / "tiny-slm", tok_dir, seed=1, hidden=64, layers=2)
    llm = build_model(root / "tiny-llm", tok_dir, seed=2, hidden=96, layers=3)
    return slm, llm
