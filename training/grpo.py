"""`relay train grpo`: GRPO with the LLM in the loop, on TRL's GRPOTrainer with a relay rollout.

Per step: `prompts_per_step` questions, each answered `group_size` (G) times by the policy SLM
through the serving loop (`training/rollout.py`); each answer gets a reward from
`training/rewards.py` (simple, or difficulty-aware classified per question group), and TRL takes
the clipped policy-gradient step with a KL penalty to the starting policy. The LLM's tokens are
masked out of the loss (`env_mask`) unless `grpo.include_llm_tokens`.

Questions first pass the teacher filter (METHOD.md §3.2): the LLM alone answers each `k` times
and a question is kept when it solves at least `teacher_min_pass` of them. Results are cached in
`<out>/teacher_filter.jsonl`, one line per question, so the filter resumes too.

Logs: TRL's (loss, KL, reward, reward std, clip ratio) plus relay/accuracy, relay/llm_share,
relay/relays_per_answer and reward per scenario, every step, in `<out>/metrics.jsonl`; the curves
are drawn into `<out>/curves.png`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from common.errors import UserError
from edge.cost import cloud_failures
from edge.relay.driver import RelayEngine
from edge.relay.settings import RelaySettings
from edge.vocab import Vocab
from evaluation.prompts import messages_for
from training.config import TrainConfig
from training.lockstep import LockstepBatcher, SlotLink, run_lockstep
from training.questions import EvalGuard, Question, check_no_eval_leak
from training.rewards import make_trl_reward, math_verify_grader
from training.rollout import Rollout, TorchSlm, run_rollout
from training.sft import last_checkpoint, load_tokenizer, lora_config, publish, trainer_kwargs
from training.warmup import append_jsonl, read_jsonl, repair_jsonl


class RelayRollouts:
    """TRL `rollout_func`: one relay answer per prompt entry, through the serving loop.

    With `lockstep`, the answers to one question (consecutive entries) run together, their policy
    forwards batched (`training/lockstep.py`); otherwise one after the other at batch 1.
    """

    def __init__(
        self,
        vocab: Vocab,
        link_factory: Callable[[], object],
        settings: RelaySettings,
        *,
        include_llm_tokens: bool,
        num_generations: int,
        lockstep: bool = True,
    ):
        self.vocab, self.link_factory, self.settings = vocab, link_factory, settings
        self.include_llm_tokens = include_llm_tokens
        self.num_generations = num_generations
        self.lockstep = lockstep
        self.calls = 0

    def __call__(self, prompts: list, trainer) -> dict:
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        # TRL hands this process's prompts as the sampler made them: each question G times in a
        # row. If it ever passes each question once, answer it G times instead.
        g = self.num_generations
        entries = prompts if _repeated(prompts, g) else [p for p in prompts for _ in range(g)]
        try:
            rollouts = []
            for start in range(0, len(entries), g):
                group = [_as_messages(m) for m in entries[start : start + g]]
                rollouts += self._group(model, group)
        finally:
            model.train(was_training)
        if failed := [f for r in rollouts for f in cloud_failures(r.fallbacks, self.settings.policy)]:
            # Those answers finished without the help they asked for: training on them would teach
            # that calling does not pay. The step is not taken; the last checkpoint resumes it.
            raise UserError(
                f"the LLM failed during rollouts ({failed[0]}); no step was trained on them: "
                "rerun the same command once the cloud is back (it resumes from the last checkpoint)"
            )
        return _trl_fields(rollouts, self.vocab.eos_ids[0])

    def _settings(self) -> RelaySettings:
        self.calls += 1
        return self.settings.model_copy(update={"seed": self.settings.seed + self.calls})

    def _group(self, model, group: list[list[dict]]) -> list[Rollout]:
        settings = [self._settings() for _ in group]
        if not self.lockstep:
            out = []
            for messages, s in zip(group, settings, strict=True):
                link = self.link_factory()
                try:
                    engine = RelayEngine(TorchSlm(model), self.vocab, link, cloud_state="connected")
                    out.append(run_rollout(engine, messages, s, include_llm_tokens=self.include_llm_tokens))
                finally:
                    link.close()
            return out
        batcher = LockstepBatcher(model, len(group), pad_id=self.vocab.eos_ids[0])

        def job(i: int) -> Rollout:
            link = SlotLink(self.link_factory(), batcher, i)
            try:
                engine = RelayEngine(batcher.slot(i), self.vocab, link, cloud_state="connected")
                return run_rollout(engine, group[i], settings[i], include_llm_tokens=self.include_llm_tokens)
            finally:
                link.close()

        return run_lockstep([job] * len(group), batcher)


def _trl_fields(rollouts: list[Rollout], eos: int) -> dict:
    out: dict[str, list] = {k: [] for k in ("prompt_ids", "completion_ids", "logprobs", "env_mask")}
    out |= {k: [] for k in ("answer_text", "llm_tokens", "answer_tokens", "relays")}
    for r in rollouts:
        if not r.completion_ids:  # TRL needs at least one token per completion
            r.completion_ids, r.env_mask, r.logprobs = [eos], [1], [0.0]
        out["prompt_ids"].append(r.prompt_ids)
        out["completion_ids"].append(r.completion_ids)
        out["logprobs"].append(r.logprobs)
        out["env_mask"].append(r.env_mask)
        out["answer_text"].append(r.text)
        out["llm_tokens"].append(r.llm_tokens)
        out["answer_tokens"].append(r.answer_tokens)
        out["relays"].append(r.relays)
    return out


def _repeated(prompts: list, g: int) -> bool:
    if len(prompts) % g:
        return False
    return all(prompts[i] == prompts[i - i % g] for i in range(len(prompts)))


def _as_messages(prompt) -> list[dict]:
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]


# ----------------------------------------------------------------------------- teacher filter


def teacher_filter(questions: list[Question], engine: RelayEngine, config: TrainConfig, out: Path) -> list[Question]:
    """Questions the LLM alone solves in >= teacher_min_pass of k samples (cached per question)."""
    g = config.grpo
    if g.teacher_samples == 0:
        print(f"teacher filter off: all {len(questions)} questions")
        return questions
    cache = out / "teacher_filter.jsonl"
    known = {row["id"]: row for row in read_jsonl(cache) if row.get("k") == g.teacher_samples}
    base = RelaySettings(policy="cloud-only", max_new_tokens=g.max_new_tokens, temperature=0.7, max_n=g.max_new_tokens)
    for q in questions:
        if q.id in known:
            continue
        passes = 0
        for i in range(g.teacher_samples):
            stream = engine.answer(messages_for(q.question), base.model_copy(update={"seed": i}))
            for _ in stream:
                pass
            passes += math_verify_grader(stream.text, q.answer)
        row = {"id": q.id, "k": g.teacher_samples, "passes": passes}
        append_jsonl(cache, row)
        known[q.id] = row
    kept = [q for q in questions if known[q.id]["passes"] >= g.teacher_min_pass * g.teacher_samples]
    print(f"teacher filter: kept {len(kept)} of {len(questions)} questions (LLM pass rate >= {g.teacher_min_pass})")
    return kept


# ----------------------------------------------------------------------------- training


def rollout_log(out: Path) -> Callable[[list[dict]], None]:
    """Append every graded rollout to `out/rollouts.jsonl` (one JSON line per answer, with the
    number of the reward batch), to read what GRPO saw."""
    path = out / "rollouts.jsonl"
    batches = [len({row["batch"] for row in read_jsonl(path)})] if path.is_file() else [0]

    def write(rows: list[dict]) -> None:
        batches[0] += 1
        for row in rows:
            append_jsonl(path, {"batch": batches[0], **row})

    return write


def warmup_solved(questions: list[Question], progress: Path) -> list[Question]:
    """The questions whose warm-up answer was right: by the SLM alone or after the LLM's splice."""
    if not progress.is_file():
        raise UserError(f"grpo.questions=warmup_solved needs the warm-up's {progress} (run `relay train warmup`)")
    solved = {row["id"] for row in read_jsonl(progress) if row.get("outcome") in ("no_call", "relayed")}
    kept = [q for q in questions if q.id in solved]
    if not kept:
        raise UserError(f"no question in {progress} was solved at warm-up; use grpo.questions=all")
    print(f"warm-up solved {len(kept)} of {len(questions)} questions: training on those")
    return kept


def _llm_links(config: TrainConfig, vocab_dir: Path) -> Callable[[], object]:
    """A factory of LLM links for rollouts (one per answer): the cloud's backend in this process
    (one model, a KV cache per link) or a running cloud over gRPC (a session per link)."""
    from models.supply import ensure_model

    address = config.grpo.cloud
    if address == "in-process":
        from cloud.backend import TransformersBackend
        from training.rollout import InProcessLink

        llm_dir = ensure_model(config.models.llm, cache_dir=config.models.cache_dir)
        backend = TransformersBackend.load(llm_dir, device=config.models.llm_device, threads=config.models.threads)
        return lambda: InProcessLink(backend)
    import os

    from edge.cloud_link import CloudError, CloudLink
    from models.identity import tokenizer_sha256

    digest = tokenizer_sha256(vocab_dir)

    def connect() -> CloudLink:
        link = CloudLink(address, token=os.environ.get("RELAY_CLOUD_TOKEN"), timeout_s=600)
        try:
            link.connect(digest)
        except CloudError as exc:
            raise UserError(f"GRPO needs the LLM: {exc}") from None
        return link

    connect().close()  # fail now, not at the first rollout
    return connect


def run_grpo(
    config: TrainConfig, questions: list[Question], out: Path, adapter: Path | None, *, grader=None, guard=None
) -> Path:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from models.supply import ensure_model

    g = config.grpo
    out.mkdir(parents=True, exist_ok=True)
    for name in ("teacher_filter.jsonl", "metrics.jsonl", "rollouts.jsonl"):
        repair_jsonl(out / name)
    check_no_eval_leak([q.question for q in questions], guard or EvalGuard.from_benchmarks(config.models.cache_dir))
    slm_dir = ensure_model(config.models.slm, cache_dir=config.models.cache_dir)
    vocab = Vocab.load(slm_dir)
    if config.models.threads:
        torch.set_num_threads(config.models.threads)
    model = AutoModelForCausalLM.from_pretrained(slm_dir, dtype=torch.float32)
    peft_config = lora_config(g.lora) if g.use_lora else None
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
        peft_config = None
        print(f"GRPO from the warm-up adapter {adapter}")
    links = _llm_links(config, slm_dir)
    settings = RelaySettings(
        policy="learned", max_relays=g.max_relays, max_new_tokens=g.max_new_tokens, max_n=g.max_n,
        temperature=g.temperature, seed=config.seed,
    )  # fmt: skip
    filter_engine = RelayEngine(TorchSlm(model), vocab, links(), cloud_state="connected")
    kept = teacher_filter(questions, filter_engine, config, out)
    if not kept:
        raise UserError("no question passed the teacher filter; lower grpo.teacher_min_pass or add questions")
    rows = [{"prompt": messages_for(q.question), "id": q.id, "answer": q.answer} for q in kept]
    tokenizer = load_tokenizer(slm_dir)
    args = GRPOConfig(
        max_steps=g.steps,
        beta=g.beta,
        epsilon=g.epsilon,
        epsilon_high=g.epsilon_high,
        temperature=g.temperature,
        num_generations=g.group_size,
        per_device_train_batch_size=g.group_size,
        gradient_accumulation_steps=g.prompts_per_step,
        max_completion_length=g.max_new_tokens + 1,
        **trainer_kwargs(out, learning_rate=g.learning_rate, save_steps=g.save_steps, seed=config.seed),
    )
    rollouts = RelayRollouts(
        vocab,
        links,
        settings,
        include_llm_tokens=g.include_llm_tokens,
        num_generations=g.group_size,
        lockstep=g.lockstep,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[make_trl_reward(g.reward, grader or math_verify_grader, sink=rollout_log(out))],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        rollout_func=rollouts,
        callbacks=[MetricsFile(out / "metrics.jsonl")],
    )
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=last_checkpoint(out / "checkpoints"))
    final = out / "final"
    publish(trainer.save_model, final)
    from training.plot import plot_curves

    plot_curves(out / "metrics.jsonl", out / "curves.png")
    summary = {
        "steps": trainer.state.global_step,
        "questions": len(kept),
        "answers_rolled_out_this_sitting": rollouts.calls,
        "wall_s_this_sitting": round(time.perf_counter() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"adapter: {final}  curves: {out / 'curves.png'}")
    return final


def _metrics_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class MetricsFile(_metrics_callback_base()):
    """Append every log record (TRL's metrics and ours) to a JSONL file, with the step."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            append_jsonl(self.path, {"step": state.global_step, **logs})
