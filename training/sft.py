"""`relay train sft`: the warm-up SFT with TRL's SFTTrainer and a peft LoRA adapter.

Each warm-up example is tokenized the way the edge will see it: the chat-templated prompt (the
edge's `Vocab`, so the template matches serving), then each segment's ids in order, then the EOS.
The loss covers only assistant tokens the SLM writes itself (its text and its commands, and the
EOS); the LLM's spliced tokens are fed but kept out of the loss unless `include_llm_tokens`,
since at serving time they are given, not generated. TRL turns the `completion_mask` into labels.

Resumable: checkpoints every `save_steps` under `<out>/checkpoints`, and a rerun continues from
the last one. The adapter is published to `<out>/final` only when training finishes (written to
a temporary folder and renamed), so a half-trained adapter is never taken as the result.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from common.errors import UserError
from edge.vocab import Vocab
from training.config import LoraSection, TrainConfig
from training.questions import EvalGuard, check_no_eval_leak
from training.warmup import read_jsonl


def encode_example(
    row: dict, vocab: Vocab, *, include_llm_tokens: bool, window: int | None = None, loss_on: str = "slm"
) -> dict:
    """input_ids and completion_mask (1 = in the loss) for one warm-up example.

    `window`: an example with commands ends `window` SLM tokens after its last LLM span (and gets
    no EOS there), so the sequence is mostly about the decision to call, and shorter.
    `loss_on="commands"`: only the command tokens are in the loss (`SftSection.loss_on`)."""
    learned_sources = ("command",) if loss_on == "commands" else ("slm", "command")
    try:
        prompt = vocab.encode_chat([{"role": "user", "content": row["prompt"]}])
        ids, mask = list(prompt), [0] * len(prompt)
        segments = row["segments"]
        sources = [seg["source"] for seg in segments]
        last_llm = len(sources) - 1 - sources[::-1].index("llm") if window is not None and "llm" in sources else None
        for i, seg in enumerate(segments):
            piece = vocab.encode(seg["text"])
            if last_llm is not None and i > last_llm:
                piece = piece[:window]
            learn = seg["source"] in learned_sources or include_llm_tokens
            ids += piece
            mask += [int(learn)] * len(piece)
            if last_llm is not None and i > last_llm:
                return {"input_ids": ids, "completion_mask": mask}
    except (KeyError, TypeError) as exc:
        raise UserError(f"malformed warm-up example {row.get('id', '?')!r}: {type(exc).__name__}: {exc}") from None
    if last_llm is None or last_llm == len(segments) - 1:
        ids.append(vocab.eos_ids[0])
        mask.append(int(loss_on != "commands"))
    return {"input_ids": ids, "completion_mask": mask}


def load_examples(
    path: Path,
    vocab: Vocab,
    *,
    include_llm_tokens: bool,
    max_length: int,
    guard: EvalGuard | None,
    window: int | None = None,
    loss_on: str = "slm",
):
    rows = list(read_jsonl(path))
    if not rows:
        raise UserError(f"no warm-up examples in {path}")
    if guard is not None:
        check_no_eval_leak([r.get("question", "") for r in rows], guard)
    encoded = [
        encode_example(r, vocab, include_llm_tokens=include_llm_tokens, window=window, loss_on=loss_on) for r in rows
    ]
    kept = [e for e in encoded if len(e["input_ids"]) <= max_length]
    if not kept:
        raise UserError(f"every example is longer than sft.max_length={max_length}")
    return kept, len(encoded) - len(kept)


def lora_config(section: LoraSection):
    from peft import LoraConfig

    return LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=section.target_modules,
        task_type="CAUSAL_LM",
    )


def trainer_kwargs(out: Path, *, learning_rate: float, save_steps: int, seed: int) -> dict:
    """TrainingArguments both stages share: checkpoints under `out`, logs every step, CPU or GPU."""
    import torch

    gpu = torch.cuda.is_available()
    return {
        "output_dir": str(out / "checkpoints"),
        "learning_rate": learning_rate,
        "logging_steps": 1,
        "save_steps": save_steps,
        "save_total_limit": 2,
        "report_to": "none",
        "seed": seed,
        "use_cpu": not gpu,
        "bf16": gpu and torch.cuda.is_bf16_supported(),
        "dataloader_num_workers": 0,
    }


def load_tokenizer(slm_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(slm_dir, fix_mistral_regex=False)  # see cloud/backend.py
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def last_checkpoint(folder: Path) -> str | None:
    ckpts = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(ckpts[-1]) if ckpts else None


def publish(src_save, final: Path) -> None:
    """Save into `final.tmp`, then rename: `final` exists only when complete."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    src_save(str(tmp))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def run_sft(
    config: TrainConfig, data: Path, out: Path, *, guard: EvalGuard | None = None, adapter: Path | None = None
) -> Path:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from models.supply import ensure_model

    s = config.sft
    slm_dir = ensure_model(config.models.slm, cache_dir=config.models.cache_dir)
    vocab = Vocab.load(slm_dir)
    guard = guard or EvalGuard.from_benchmarks(config.models.cache_dir)
    rows, dropped = load_examples(
        data,
        vocab,
        include_llm_tokens=s.include_llm_tokens,
        max_length=s.max_length,
        guard=guard,
        window=s.window_after_call,
        loss_on=s.loss_on,
    )
    print(f"SFT on {len(rows)} examples from {data} ({dropped} longer than {s.max_length} tokens dropped)")
    if config.models.threads:
        torch.set_num_threads(config.models.threads)
    tokenizer = load_tokenizer(slm_dir)
    model = AutoModelForCausalLM.from_pretrained(slm_dir, dtype=torch.float32)
    peft_config = lora_config(s.lora) if s.use_lora else None
    if adapter is not None:  # another round on top of an earlier adapter
        from peft import PeftModel

        model, peft_config = PeftModel.from_pretrained(model, str(adapter), is_trainable=True), None
        print(f"continuing from the adapter {adapter}")
    args = SFTConfig(
        num_train_epochs=s.epochs,
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        warmup_ratio=s.warmup_ratio,
        max_length=s.max_length,
        completion_only_loss=True,
        **trainer_kwargs(out, learning_rate=s.learning_rate, save_steps=s.save_steps, seed=config.seed),
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=last_checkpoint(out / "checkpoints"))
    final = out / "final"
    publish(trainer.save_model, final)
    summary = {
        "examples": len(rows),
        "dropped_too_long": dropped,
        "steps": trainer.state.global_step,
        "wall_s_this_sitting": round(time.perf_counter() - started, 1),
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "recipe": config.name,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"adapter: {final}  (steps {summary['steps']}, last loss {summary['losses'][-1:]})")
    return final
