"""`relay train questions | warmup | sft | grpo | ship`: the training stages, one recipe each.

Each stage reads the recipe (`--recipe smoke|cpu|gpu|file.yaml`, `--set section.key=value`) and
writes under the recipe's `out_dir` (or `--out`); every stage resumes where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="teach the SLM when to call: warm-up data, SFT, GRPO, ship")
    stages = train.add_subparsers(dest="train_command", required=True, metavar="STAGE")
    for name, func, text in (
        ("questions", cmd_questions, "write the training question set (never an evaluation problem)"),
        ("warmup", cmd_warmup, "build the warm-up SFT set (paper or divergence mode) with a datasheet"),
        ("sft", cmd_sft, "warm-up SFT (LoRA, assistant tokens only)"),
        ("grpo", cmd_grpo, "GRPO with the LLM in the loop (relay rollouts)"),
        ("ship", cmd_ship, "merge the adapter, export ONNX int8 and check it runs in the edge runtime"),
        ("head-data", cmd_head_data, "the SLM's greedy answers scored by the LLM: data for the call head"),
        ("head", cmd_head, "fit the call head on that data and write it beside the SLM"),
        ("fix-probe", cmd_fix_probe, "which single relay fixes a wrong answer: head, entropy, random ..."),
    ):
        p = stages.add_parser(name, help=text)
        p.add_argument("--recipe", default="cpu", help="smoke | cpu | gpu | path to a recipe YAML")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("--out", type=Path, help="output folder (default: the recipe's out_dir)")
        p.add_argument("--limit", type=int, help="handle at most this many questions (warmup, grpo)")
        p.set_defaults(func=func)
    for p in stages.choices.values():
        if p.prog.endswith(" head"):
            p.add_argument("--publish", type=Path, help="also write the head to this .npz (e.g. models/heads/...)")
        if p.prog.endswith("warmup"):
            p.add_argument("--mode", choices=("divergence", "paper"), help="override warmup.mode")
        if p.prog.endswith(("sft", "grpo")):
            p.add_argument("--data", type=Path, help="warm-up examples / question JSONL to train on")
        if p.prog.endswith(("sft", "grpo", "ship")):
            p.add_argument("--adapter", type=Path, help="start from this LoRA adapter (grpo, ship: the SFT output)")
        if p.prog.endswith("ship"):
            p.add_argument("--publish", metavar="NAME", help="also copy the adapter to models/adapters/NAME")


def _given_adapter(args: argparse.Namespace) -> Path | None:
    """The --adapter the user named, which must exist (a silent fresh start would mislead)."""
    adapter = getattr(args, "adapter", None)
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise UserError(f"no LoRA adapter at {adapter} (adapter_config.json missing)")
    return adapter


def _config(args: argparse.Namespace):
    from training.config import load_train_config

    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    overrides = list(args.overrides)
    if getattr(args, "mode", None):
        overrides.append(f"warmup.mode={args.mode}")
    if args.out:
        overrides.append(f"out_dir={args.out}")
    return load_train_config(args.recipe, overrides)


def _questions(config, limit: int | None):
    from training.questions import build_question_set, read_questions

    path = Path(config.out_dir) / "questions.jsonl"
    if path.is_file():
        questions = read_questions(path)
    else:
        from evaluation.data import write_jsonl_atomic

        d = config.data
        questions = build_question_set(
            math_count=d.math_count, gym_count=d.gym_count, max_level=d.math_max_level, seed=d.seed,
            cache=config.models.cache_dir,
        )  # fmt: skip
        write_jsonl_atomic(path, (q.to_row() for q in questions))
    return questions[:limit] if limit else questions


def cmd_questions(args: argparse.Namespace) -> int:
    config = _config(args)
    questions = _questions(config, args.limit)
    print(f"{len(questions)} questions in {Path(config.out_dir) / 'questions.jsonl'}")
    return 0


def slm_onnx_dir(config) -> Path:
    from edge.export import ensure_onnx
    from models.supply import cache_root, ensure_model

    slm_dir = ensure_model(config.models.slm, cache_dir=config.models.cache_dir)
    return ensure_onnx(slm_dir, cache_root(config.models.cache_dir), config.models.slm_onnx_quant)


def cmd_warmup(args: argparse.Namespace) -> int:
    from models.supply import ensure_model
    from training.models import LocalSlm, TeacherLlm
    from training.warmup import WarmupBuilder, run_warmup

    config = _config(args)
    questions = _questions(config, args.limit)
    slm = LocalSlm(slm_onnx_dir(config), threads=config.models.threads)
    llm = None
    if config.warmup.mode == "divergence":
        llm_dir = ensure_model(config.models.llm, cache_dir=config.models.cache_dir)
        llm = TeacherLlm(llm_dir, device=config.models.llm_device, threads=config.models.threads)
    builder = WarmupBuilder(slm, llm, config.warmup, seed=config.seed)
    run_warmup(config, questions, Path(config.out_dir) / f"warmup-{config.warmup.mode}", builder)
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from training.sft import run_sft

    config = _config(args)
    adapter = _given_adapter(args)
    data = args.data or Path(config.out_dir) / f"warmup-{config.warmup.mode}" / "examples.jsonl"
    if not data.is_file():
        raise UserError(f"no warm-up examples at {data} (run `relay train warmup` first or pass --data)")
    run_sft(config, data, Path(config.out_dir) / "sft", adapter=adapter)
    return 0


def cmd_grpo(args: argparse.Namespace) -> int:
    from training.grpo import run_grpo, warmup_solved

    config = _config(args)
    adapter = _given_adapter(args) or Path(config.out_dir) / "sft" / "final"
    questions = _questions(config, args.limit)
    if config.grpo.questions == "warmup_solved":
        progress = Path(config.out_dir) / f"warmup-{config.warmup.mode}" / "progress.jsonl"
        questions = warmup_solved(questions, progress)
    run_grpo(config, questions, Path(config.out_dir) / "grpo", adapter if adapter.is_dir() else None)
    return 0


def cmd_ship(args: argparse.Namespace) -> int:
    from training.ship import ship

    config = _config(args)
    adapter = _given_adapter(args) or Path(config.out_dir) / "grpo" / "final"
    if not adapter.is_dir():
        raise UserError(f"no adapter at {adapter} (train first or pass --adapter)")
    print(ship(config, adapter, publish_as=args.publish))
    return 0


def cmd_head_data(args: argparse.Namespace) -> int:
    import torch

    from cloud.backend import TransformersBackend
    from evaluation.grading import grade
    from models.supply import ensure_model
    from training.head_data import HeadDataCollector, collect
    from training.models import LocalSlm
    from training.questions import EvalGuard

    config = _config(args)
    questions = _questions(config, args.limit)
    m = config.models
    if m.threads:
        torch.set_num_threads(m.threads)
    slm_torch = TransformersBackend.load(ensure_model(m.slm, cache_dir=m.cache_dir), device="cpu", dtype="float32")
    llm = TransformersBackend.load(ensure_model(m.llm, cache_dir=m.cache_dir), device=m.llm_device, threads=m.threads)
    slm = LocalSlm(slm_onnx_dir(config), threads=m.threads)
    collector = HeadDataCollector(slm, slm_torch.model, llm.model, max_new_tokens=config.head.max_new_tokens)
    out = Path(config.out_dir) / "head-data"
    done = collect(collector, questions, out, guard=EvalGuard.from_benchmarks(m.cache_dir), grade=grade)
    print(f"{done} questions in {out}")
    return 0


def cmd_head(args: argparse.Namespace) -> int:
    from training.call_head import train_head

    config = _config(args)
    print(train_head(config, Path(config.out_dir) / "head-data", publish=args.publish))
    return 0


def cmd_fix_probe(args: argparse.Namespace) -> int:
    from evaluation.grading import grade
    from evaluation.prompts import messages_for
    from models.supply import ensure_model
    from training.call_head import answer_parts, out_of_fold
    from training.fix_probe import FixProbe, positions, run_probe
    from training.head_data import load_features
    from training.models import LocalSlm, TeacherLlm, slm_token_bytes

    config = _config(args)
    m, h = config.models, config.head
    questions = {q.id: q for q in _questions(config, None)}
    rows = load_features(Path(config.out_dir) / "head-data")
    token_bytes = slm_token_bytes(ensure_model(m.slm, cache_dir=m.cache_dir))
    parts = answer_parts(rows, h, token_bytes)
    scores = out_of_fold(rows, parts, h)
    slm = LocalSlm(slm_onnx_dir(config), threads=m.threads)
    items = []
    for (row, arrays), head_scores, (_, divergences) in zip(rows, scores, parts, strict=True):
        if row["correct"] or row["id"] not in questions:
            continue
        q = questions[row["id"]]
        where = positions(q.id, arrays, head_scores, divergences, h)
        prompt = slm.vocab.encode_chat(messages_for(q.question))
        items.append({"id": q.id, "gold": q.answer, "prompt": prompt, "answer": arrays["slm_token"].tolist(),
                      "positions": where})  # fmt: skip
    items = items[: args.limit] if args.limit else items
    llm = TeacherLlm(ensure_model(m.llm, cache_dir=m.cache_dir), device=m.llm_device, threads=m.threads)
    probe = FixProbe(slm, llm, slm.vocab, grade, fixed_n=h.fixed_n, max_new_tokens=h.max_new_tokens)
    summary = run_probe(probe, items, Path(config.out_dir) / "fix-probe")
    for chooser, s in summary.items():
        print(f"{chooser:>10}: {s['fixed']} fixed of {s['answers']} wrong answers (called on {s['called']})")
    return 0
