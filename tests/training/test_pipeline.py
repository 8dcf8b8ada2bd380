"""The training pipeline on tiny local models: warm-up data (both modes), SFT, GRPO, ship.

Real components throughout: the tiny SLM on onnxruntime and in torch, the tiny LLM through the
cloud's TransformersBackend, TRL's trainers, peft, and (for the trajectory test) a real grpc.aio
server on loopback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from common.errors import UserError
from edge.cloud_link import CloudLink
from edge.relay.commands import COMMAND_RE
from edge.relay.driver import RelayEngine
from edge.relay.settings import RelaySettings
from edge.runtime import OnnxSlm
from edge.vocab import Vocab
from models.identity import tokenizer_sha256
from tests.grpc.server_thread import ServerThread, config, tiny_backend
from training.config import load_train_config
from training.models import LocalSlm, TeacherLlm
from training.questions import EvalGuard, Question, check_no_eval_leak, fingerprint
from training.warmup import EXAMPLES, PROGRESS, WarmupBuilder, read_jsonl, run_warmup

QUESTIONS = [
    Question(f"t/{i}", "test", f"Tom has {i} boxes of 4 apples. How many apples?", str(4 * i)) for i in range(3)
]
NO_GUARD = EvalGuard([])


@pytest.fixture(scope="module")
def recipe(tiny_pair, tmp_path_factory):
    slm_dir, llm_dir = tiny_pair
    out = tmp_path_factory.mktemp("train")
    return load_train_config(
        "smoke", [f"models.slm={slm_dir}", f"models.llm={llm_dir}", f"out_dir={out}", "models.llm_device=cpu"]
    )


@pytest.fixture(scope="module")
def local_slm(tiny_onnx) -> LocalSlm:
    return LocalSlm(tiny_onnx, threads=1)


@pytest.fixture(scope="module")
def teacher(tiny_pair) -> TeacherLlm:
    return TeacherLlm(tiny_pair[1], device="cpu", threads=1)


class FlipGrader:
    """The SLM alone is always wrong; any answer with an LLM splice is right."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, text: str, gold: str) -> bool:
        self.calls += 1
        return bool(COMMAND_RE.search(text.encode()))


def _guarded(monkeypatch) -> None:
    monkeypatch.setattr(EvalGuard, "from_benchmarks", classmethod(lambda cls, cache=None: NO_GUARD))


def test_divergence_mode_splices_real_llm_tokens(recipe, local_slm, teacher, tmp_path, monkeypatch) -> None:
    _guarded(monkeypatch)
    builder = WarmupBuilder(local_slm, teacher, recipe.warmup, grader=FlipGrader())
    sheet = run_warmup(recipe, QUESTIONS, tmp_path, builder, say=lambda _: None)
    rows = list(read_jsonl(tmp_path / EXAMPLES))
    assert sheet["examples_with_calls"] == len(rows) > 0
    vocab = local_slm.vocab
    for row in rows:
        sources = [s["source"] for s in row["segments"]]
        assert "command" in sources and "llm" in sources
        command = next(s["text"] for s in row["segments"] if s["source"] == "command")
        n = int(COMMAND_RE.fullmatch(command.encode()).group(1))
        assert n == row["calls"][0]["n"]
        # The SLM's text before the command is its own answer, unchanged.
        prompt = vocab.encode_chat([{"role": "user", "content": row["prompt"]}])
        own, _ = local_slm.generate(prompt, recipe.warmup.max_new_tokens, 0.0, 0)
        at = row["calls"][0]["at_token"]
        prefix = "".join(s["text"] for s in row["segments"][: sources.index("command")])
        assert prefix == vocab.decode(own[:at])
        # The span after it is the LLM's own greedy continuation, N tokens of it.
        expected = teacher.greedy(prompt + own[:at], n)
        llm_text = next(s["text"] for s in row["segments"] if s["source"] == "llm")
        assert llm_text == vocab.decode(expected[:n])


def test_paper_mode_keeps_the_answer_and_inserts_parsable_commands(recipe, local_slm, tmp_path, monkeypatch) -> None:
    _guarded(monkeypatch)
    settings = recipe.warmup.model_copy(update={"mode": "paper"})
    builder = WarmupBuilder(local_slm, None, settings, grader=lambda text, gold: False)
    questions = [Question(f"p/{i}", "test", f"What is {i} plus {i}?", str(2 * i)) for i in range(8)]
    run_warmup(recipe.model_copy(update={"warmup": settings}), questions, tmp_path, builder, say=lambda _: None)
    rows = list(read_jsonl(tmp_path / EXAMPLES))
    assert len(rows) == 8
    assert any(row["calls"] for row in rows)
    for row in rows:
        text = "".join(s["text"] for s in row["segments"])
        assert len(COMMAND_RE.findall(text.encode())) == len(row["calls"]) <= 3
        prompt = local_slm.vocab.encode_chat([{"role": "user", "content": row["prompt"]}])
        own, _ = local_slm.generate(prompt, settings.max_new_tokens, settings.temperature, _seed_of(row["id"]))
        assert COMMAND_RE.sub(b"", text.encode()).decode() == local_slm.vocab.decode(own)


def _seed_of(qid: str) -> int:
    import random

    return random.Random(f"0/{qid}").randrange(2**31)


def test_warmup_resumes_and_ignores_a_torn_line(recipe, local_slm, teacher, tmp_path, monkeypatch) -> None:
    _guarded(monkeypatch)
    builder = WarmupBuilder(local_slm, teacher, recipe.warmup, grader=FlipGrader())
    run_warmup(recipe, QUESTIONS[:2], tmp_path, builder, say=lambda _: None)
    with open(tmp_path / PROGRESS, "a") as fh:
        fh.write('{"id": "t/2", "outcome"')  # a crash mid-write
    grader = FlipGrader()
    run_warmup(recipe, QUESTIONS, tmp_path, WarmupBuilder(local_slm, teacher, recipe.warmup, grader=grader), say=print)
    handled = [row["id"] for row in read_jsonl(tmp_path / PROGRESS)]
    assert handled == ["t/0", "t/1", "t/2"]  # only the unfinished question was redone
    assert grader.calls >= 1


def test_refuses_evaluation_problems() -> None:
    guard = EvalGuard([fingerprint("What is 1+1?")])
    check_no_eval_leak(["What is 2+2?"], guard)
    with pytest.raises(UserError, match="refusing to train: 1 of 2"):
        check_no_eval_leak(["What is 2+2?", "  what is 1+1 "], guard)


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _write_examples(path: Path, rows: int = 4) -> None:
    with open(path, "w") as fh:
        for i in range(rows):
            segments = [
                {"source": "slm", "text": "Let me think "},
                {"source": "command", "text": "<call>8</call>"},
                {"source": "llm", "text": " 3 * 4 = 12"},
                {"source": "slm", "text": " so \\boxed{10}"},
            ]
            fh.write(
                json.dumps({"id": f"e/{i}", "question": f"q{i}", "prompt": f"Tom has {i} apples", "segments": segments})
                + "\n"
            )


def test_sft_masks_llm_tokens_and_trains_lora(recipe, tmp_path) -> None:
    from training.sft import encode_example, run_sft

    data = tmp_path / "examples.jsonl"
    _write_examples(data)
    vocab = Vocab.load(recipe.models.slm)
    row = json.loads(data.read_text().splitlines()[0])
    enc = encode_example(row, vocab, include_llm_tokens=False)
    llm_ids = vocab.encode(" 3 * 4 = 12")
    prompt_len = len(vocab.encode_chat([{"role": "user", "content": row["prompt"]}]))
    masked = [
        i for i, m in zip(enc["input_ids"][prompt_len:], enc["completion_mask"][prompt_len:], strict=True) if not m
    ]
    assert masked == llm_ids and sum(enc["completion_mask"][:prompt_len]) == 0
    assert all(encode_example(row, vocab, include_llm_tokens=True)["completion_mask"][prompt_len:])

    # Windowed: the example ends 2 SLM tokens after the LLM's span, with no EOS.
    windowed = encode_example(row, vocab, include_llm_tokens=False, window=2)
    tail = vocab.encode(" so \\boxed{10}")[:2]
    assert windowed["input_ids"][-2:] == tail and windowed["input_ids"][-len(tail) - len(llm_ids) : -2] == llm_ids

    # Commands only: the loss sees `<call>8</call>` and nothing the SLM wrote around it, nor the EOS.
    commands = encode_example(row, vocab, include_llm_tokens=False, loss_on="commands")
    learned = [i for i, m in zip(commands["input_ids"], commands["completion_mask"], strict=True) if m]
    assert commands["input_ids"] == enc["input_ids"] and learned == vocab.encode("<call>8</call>")

    final = run_sft(recipe, data, tmp_path / "sft", guard=NO_GUARD)
    summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert summary["steps"] == 4 and all(math.isfinite(x) for x in summary["losses"])
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(recipe.models.slm)
    trained = PeftModel.from_pretrained(base, str(final))
    lora_b = [p for n, p in trained.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # LoRA B starts at zero: it moved


def test_sft_rejects_a_malformed_row(recipe, tmp_path) -> None:
    from training.sft import load_examples

    data = tmp_path / "bad.jsonl"
    data.write_text('{"id": "x", "prompt": "hi"}\n')
    with pytest.raises(UserError, match="malformed warm-up example 'x'"):
        load_examples(data, Vocab.load(recipe.models.slm), include_llm_tokens=False, max_length=64, guard=None)


def test_grpo_step_changes_the_policy(recipe, tmp_path, monkeypatch) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from training import grpo

    calls: list[int] = []
    real_call = grpo.RelayRollouts.__call__

    def counting(self, prompts, trainer):
        calls.append(len(prompts))
        if not hasattr(self, "before"):
            self.before = _trainable(trainer.model)
        counting.rollouts = self
        return real_call(self, prompts, trainer)

    monkeypatch.setattr(grpo.RelayRollouts, "__call__", counting)
    g = recipe.grpo.model_copy(update={"group_size": 4, "reward": "simple", "max_relays": 2})
    cfg = recipe.model_copy(update={"grpo": g})
    # Rewards that differ inside the group, so advantages are not all zero.
    final = grpo.run_grpo(
        cfg, QUESTIONS[:1], tmp_path / "grpo", None, grader=lambda t, gold: len(t) % 2 == 0, guard=NO_GUARD
    )
    assert calls == [4]  # TRL hands the question G times; one answer each
    metrics = list(read_jsonl(tmp_path / "grpo" / "metrics.jsonl"))
    step = next(m for m in metrics if "loss" in m)
    assert math.isfinite(step["loss"]) and "relay/llm_share" in step and "kl" in step
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(recipe.models.slm), str(final))
    after = {n.replace(".default", ""): p for n, p in trained.named_parameters() if "lora" in n}
    before = {n.replace(".default", ""): p for n, p in counting.rollouts.before.items() if "lora" in n}
    assert before and any(not torch.equal(before[n], after[n]) for n in before if n in after)
    assert (tmp_path / "grpo" / "curves.png").is_file()


def test_rollout_trajectory_equals_serving_trajectory(tiny_pair, tiny_onnx) -> None:
    """The GRPO rollout (torch policy, LLM in process) and the app's path (onnxruntime SLM, real
    gRPC cloud) produce the same answer, token for token and source for source."""
    from transformers import AutoModelForCausalLM

    from training.rollout import InProcessLink, TorchSlm, run_rollout

    slm_dir, llm_dir = tiny_pair
    vocab = Vocab.load(tiny_onnx)
    settings = RelaySettings(policy="random", random_rate=0.15, fixed_n=3, max_relays=3, max_new_tokens=40, seed=7)
    messages = [{"role": "user", "content": "Tom has 3 boxes with 4 apples in each box."}]
    policy = AutoModelForCausalLM.from_pretrained(slm_dir, dtype=torch.float32).eval()
    backend = tiny_backend(llm_dir)
    rollout = run_rollout(RelayEngine(TorchSlm(policy), vocab, InProcessLink(backend)), messages, settings)
    with ServerThread(backend, config()) as server:
        link = CloudLink(server.address, timeout_s=30)
        link.connect(tokenizer_sha256(tiny_onnx))
        engine = RelayEngine(OnnxSlm.load(tiny_onnx, provider="cpu", threads=1), vocab, link)
        stream = engine.answer(messages, settings)
        list(stream)
        link.close()
    assert rollout.relays >= 1 and rollout.llm_tokens >= 1
    served = stream.machine
    n = len(served.answer_ids)
    assert rollout.completion_ids[:n] == served.answer_ids
    assert rollout.env_mask[:n] == [int(s == "slm") for s in served.answer_sources]


def test_rollouts_refuse_a_step_the_cloud_failed(tiny_pair, tiny_onnx) -> None:
    """A cloud that goes down during rollouts stops the step with one clear error: answers that
    finished alone after asking for help would teach the policy that calling does not pay."""
    import types

    from transformers import AutoModelForCausalLM

    from training.grpo import RelayRollouts

    slm_dir, llm_dir = tiny_pair
    vocab = Vocab.load(tiny_onnx)
    policy = AutoModelForCausalLM.from_pretrained(slm_dir, dtype=torch.float32)
    trainer = types.SimpleNamespace(model=policy, accelerator=types.SimpleNamespace(unwrap_model=lambda m: m))
    settings = RelaySettings(policy="random", random_rate=0.3, fixed_n=3, max_relays=2, max_new_tokens=24, seed=3)
    prompt = [{"role": "user", "content": "Tom has 3 boxes with 4 apples in each box."}]
    with ServerThread(tiny_backend(llm_dir), config()) as server:

        def connect() -> CloudLink:
            link = CloudLink(server.address, timeout_s=5)
            link.connect(tokenizer_sha256(tiny_onnx))
            return link

        healthy = RelayRollouts(vocab, connect, settings, include_llm_tokens=False, num_generations=2)
        assert sum(healthy([prompt, prompt], trainer)["llm_tokens"]) > 0
        ready = [connect(), connect()]  # connected while the cloud was up
        server.stop()
        outage = RelayRollouts(vocab, ready.pop, settings, include_llm_tokens=False, num_generations=2)
        with pytest.raises(UserError, match=r"the LLM failed during rollouts .*resumes from the last checkpoint"):
            outage([prompt, prompt], trainer)


def test_ship_merges_exports_and_runs_in_the_edge_runtime(recipe, tmp_path) -> None:
    from training.ship import ship

    data = tmp_path / "examples.jsonl"
    _write_examples(data, rows=2)
    from training.sft import run_sft

    cfg = recipe.model_copy(update={"models": recipe.models.model_copy(update={"cache_dir": tmp_path / "cache"})})
    adapter = run_sft(cfg, data, tmp_path / "sft", guard=NO_GUARD)
    report = ship(cfg, adapter)
    onnx_dir = Path(next(line.split(": ", 1)[1] for line in report.splitlines() if line.startswith("onnx int8")))
    slm = OnnxSlm.load(onnx_dir, provider="cpu", threads=1)
    assert slm.forward([1, 2, 3]).shape == (slm.vocab_size,)


def test_a_merge_that_does_not_fit_is_one_clear_error(tiny_pair, tmp_path, recipe) -> None:
    from models.merge import merge_adapter

    data = tmp_path / "examples.jsonl"
    _write_examples(data, rows=1)
    from training.sft import run_sft

    adapter = run_sft(recipe, data, tmp_path / "sft", guard=NO_GUARD)
    with pytest.raises(UserError, match="does not merge"):
        merge_adapter(tiny_pair[1], adapter, tmp_path / "merged")  # the LLM: other shapes


def test_lockstep_group_equals_answers_run_one_by_one(tiny_pair, tiny_onnx) -> None:
    """G answers with relays at different points (so feeds of different lengths share a batch)
    come out exactly as when each runs alone at batch 1."""
    from transformers import AutoModelForCausalLM

    from training.lockstep import LockstepBatcher, SlotLink, run_lockstep
    from training.rollout import InProcessLink, TorchSlm, run_rollout

    slm_dir, llm_dir = tiny_pair
    vocab = Vocab.load(tiny_onnx)
    policy = AutoModelForCausalLM.from_pretrained(slm_dir, dtype=torch.float32).eval()
    backend = tiny_backend(llm_dir)
    messages = [{"role": "user", "content": "Tom has 3 boxes with 4 apples in each box."}]
    group = [
        RelaySettings(policy="random", random_rate=0.2, fixed_n=2 + i, max_relays=3, max_new_tokens=30, seed=i)
        for i in range(4)
    ]
    alone = [run_rollout(RelayEngine(TorchSlm(policy), vocab, InProcessLink(backend)), messages, s) for s in group]
    batcher = LockstepBatcher(policy, len(group), pad_id=vocab.eos_ids[0])

    def job(i: int):
        engine = RelayEngine(batcher.slot(i), vocab, SlotLink(InProcessLink(backend), batcher, i))
        return run_rollout(engine, messages, group[i])

    together = run_lockstep([job] * len(group), batcher)
    assert sum(r.relays for r in alone) >= 2
    assert [r.completion_ids for r in together] == [r.completion_ids for r in alone]
    assert [r.env_mask for r in together] == [r.env_mask for r in alone]
    assert batcher.batches < sum(len(r.completion_ids) for r in alone)  # it did batch


@pytest.mark.parametrize(("min_n", "run"), [(1, 1), (2, 2), (4, 4)])
def test_streamed_llm_span_equals_the_whole_span_computation(recipe, local_slm, teacher, min_n, run) -> None:
    """The warm-up stops the LLM as soon as N is known; N and the span are what the plain
    compute-everything-then-choose version gives."""
    from training.insertion import agreement_n, round_up_n

    settings = recipe.warmup.model_copy(update={"min_n": min_n, "agree_run": run, "max_span": 12})
    builder = WarmupBuilder(local_slm, teacher, settings)
    vocab = local_slm.vocab
    for i in range(4):
        context = vocab.encode_chat([{"role": "user", "content": f"What is {i} times {i + 3}?"}])
        span = teacher.greedy(context, settings.max_span)
        words = [t for t in span if t not in teacher.eos_ids]
        preds = local_slm.greedy_predictions(context, words) if words else []
        n = round_up_n(agreement_n(words, preds, min_n=min_n, run=run)) if words else 1
        assert builder._llm_span(context) == (n, span[:n])


def test_malformed_question_rows_and_missing_data_are_one_line_errors(tmp_path) -> None:
    import subprocess
    import sys

    from training.questions import read_questions

    bad = tmp_path / "q.jsonl"
    bad.write_text('{"id": "a", "question": "1+1?", "answer": "2"}\n{"id": "b", "question": "no answer"}\n')
    with pytest.raises(UserError, match=r"q.jsonl:2: malformed question row"):
        read_questions(bad)
    root = Path(__file__).resolve().parents[2]
    for args, message in (
        (["sft", "--recipe", "smoke", "--data", str(tmp_path / "none.jsonl")], "error: no warm-up examples at"),
        (["warmup", "--recipe", "nosuch"], "error: unknown recipe 'nosuch'"),
        (["grpo", "--recipe", "smoke", "--set", "grpo.group_size=1"], "error: invalid config at grpo.group_size"),
        (["sft", "--recipe", "smoke", "--adapter", str(tmp_path)], "error: no LoRA adapter at"),
        (["warmup", "--recipe", "smoke", "--limit", "0"], "error: --limit must be at least 1"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "relaycli.main", "train", *args],
            capture_output=True,
            text=True,
            cwd=root,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith(message), done.stderr


def test_registry_adapter_source_merges_once_on_pull(recipe, tiny_pair, tmp_path) -> None:
    from models.registry import load_registry
    from models.supply import Supplier
    from training.sft import run_sft

    data = tmp_path / "examples.jsonl"
    _write_examples(data, rows=1)
    adapter = run_sft(recipe, data, tmp_path / "sft", guard=NO_GUARD)
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        "default_pair: p\n"
        f"models:\n  base: {{source: {{type: local, path: {tiny_pair[0]}}}}}\n"
        f"  llm: {{source: {{type: local, path: {tiny_pair[1]}}}}}\n"
        "  relay: {source: {type: adapter, base: base, path: sft/final}}\n"
        "pairs:\n  p: {slm: relay, llm: llm}\n"
    )
    supplier = Supplier(tmp_path / "cache", load_registry(registry), say=lambda _: None)
    assert supplier.status("relay") == "not merged"
    merged = supplier.model("relay")
    assert (merged / "config.json").is_file() and (merged / "tokenizer.json").is_file()
    assert supplier.status("relay") == "merged"
    stamp = (merged / "config.json").stat().st_mtime_ns
    assert supplier.pair("p").slm_dir == merged and (merged / "config.json").stat().st_mtime_ns == stamp
    assert adapter.is_dir()
    broken = tmp_path / "broken.yaml"
    broken.write_text(registry.read_text().replace("base: base", "base: nosuch"))
    with pytest.raises(UserError, match="adapter base 'nosuch' is not a model"):
        load_registry(broken)
