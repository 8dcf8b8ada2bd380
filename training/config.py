"""The training process's one typed config: a recipe YAML < env (RELAY_TRAIN__...) < `--set k=v`.

Recipes are checked in under `training/recipes/` (`smoke`, `cpu`, `gpu`); `--recipe NAME` picks one
of them, `--recipe path.yaml` any file. Every stage (warm-up data, SFT, GRPO) reads its section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.config import load_config
from common.errors import UserError

RECIPES_DIR = Path(__file__).parent / "recipes"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelsSection(_Section):
    slm: str = "qwen2.5-coder-0.5b-instruct"
    """The SLM to train: a registry name, hub:org/name, or a Hugging Face directory."""
    llm: str = "qwen2.5-coder-1.5b-instruct"
    """The LLM (teacher in the loop): registry name, hub id or directory."""
    cache_dir: Path | None = None
    slm_onnx_quant: Literal["int8", "fp32"] = "int8"
    """ONNX export the warm-up samples the SLM's answers with (fast on CPU)."""
    threads: int | None = Field(None, ge=1)
    llm_device: Literal["auto", "cpu", "cuda"] = "auto"


class DataSection(_Section):
    math_count: int = Field(300, ge=0)
    """Questions from the 4500 MATH problems outside MATH-500."""
    math_max_level: int = Field(3, ge=1, le=5)
    gym_count: int = Field(200, ge=0)
    """Generated reasoning-gym word problems."""
    seed: int = 0


class WarmupSection(_Section):
    mode: Literal["divergence", "paper"] = "divergence"
    temperature: float = Field(0.0, ge=0)
    """SLM sampling temperature for its own answers (0 = greedy, what evaluation runs)."""
    max_new_tokens: int = Field(640, ge=8)
    max_commands: int = Field(3, ge=0)
    """paper mode: commands per answer are uniform in 0..max_commands."""
    max_p_slm: float = Field(0.1, gt=0, lt=1)
    """divergence: the LLM gives the SLM's token at most this probability..."""
    min_p_llm: float = Field(0.5, gt=0, lt=1)
    """...and its own preferred token at least this one."""
    skip_first: int = Field(8, ge=0)
    divergence_on: Literal["math", "any"] = "math"
    """math: only disagreements where either model's token holds a digit or an operator count
    (on real answers most strong disagreements are wording, which is not worth a call)."""
    max_span: int = Field(40, ge=1)
    """Most LLM tokens spliced per command (N is rounded up to d*10^k and stays <= this)."""
    agree_run: int = Field(4, ge=1)
    """The SLM has taken over once its greedy predictions match this many LLM tokens in a row."""
    min_n: int = Field(4, ge=1)
    relays: int = Field(2, ge=1)
    """divergence: relays per wrong answer; a further one only while the answer is still wrong."""
    keep_unfixed: bool = True
    """Keep relayed examples whose final answer is still wrong: the command still sits where the
    LLM disagreed, which is what the warm-up should teach; `correct` marks them in the data."""
    keep_correct: float = Field(1.0, ge=0, le=1)
    """Share of answers the SLM got right alone that become no-call examples."""


class LoraSection(_Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class SftSection(_Section):
    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(8, ge=1)
    max_length: int = Field(1024, ge=16)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    include_llm_tokens: bool = False
    """Train on the LLM's spliced tokens too (distillation); off: only what the SLM writes itself."""
    save_steps: int = Field(20, ge=1)
    window_after_call: int | None = Field(None, ge=0)
    """End examples with commands this many SLM tokens after their last LLM span (no EOS there):
    shorter sequences whose loss is mostly about the decision to call. None: whole answers."""
    loss_on: Literal["slm", "commands"] = "slm"
    """slm: every token the SLM writes (its text, its commands, the EOS). commands: only the
    `<call>N</call>` tokens, so the SLM learns where to call without its own text being retrained
    (two rounds of `slm` cost it 8-10 points alone on GSM8K); examples without a command drop out."""
    lora: LoraSection = LoraSection()
    use_lora: bool = True


class GrpoSection(_Section):
    group_size: int = Field(8, ge=2)
    """G: completions per question."""
    prompts_per_step: int = Field(1, ge=1)
    steps: int = Field(30, ge=1)
    learning_rate: float = Field(1e-5, gt=0)
    beta: float = Field(0.01, ge=0)
    """KL coefficient."""
    epsilon: float = Field(0.2, gt=0)
    epsilon_high: float = Field(0.3, gt=0)
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(512, ge=8)
    max_relays: int = Field(2, ge=0)
    """Calls per rollout (the paper's training rollout allows 3 SLM turns: 2 calls)."""
    max_n: int = Field(200, ge=1)
    reward: Literal["simple", "difficulty"] = "difficulty"
    include_llm_tokens: bool = False
    """Put the LLM's tokens in the policy loss (the paper's released code does); off by default."""
    teacher_samples: int = Field(4, ge=0)
    """k: LLM samples per question for the pass-rate filter; 0 turns the filter off (on a CPU the
    filter costs more than the training: k whole LLM answers per question)."""
    teacher_min_pass: float = Field(0.5, ge=0, le=1)
    questions: Literal["all", "warmup_solved"] = "all"
    """warmup_solved: train only on questions the warm-up solved, the SLM alone or with the LLM's
    spliced help. A free stand-in for the teacher filter (it reuses the warm-up's LLM work) that also
    drops questions no group member can solve, whose groups carry almost no signal."""
    save_steps: int = Field(5, ge=1)
    lockstep: bool = True
    """Batch the policy forwards of a question's G answers (training/lockstep.py); off: batch 1."""
    cloud: str = "in-process"
    """in-process: the LLM runs in this process; host:port: a running `relay cloud serve`."""
    lora: LoraSection = LoraSection()
    use_lora: bool = True


class HeadSection(_Section):
    """The call head (training/call_head.py): a decision to call learned beside the frozen SLM."""

    max_new_tokens: int = Field(640, ge=8)
    max_p_slm: float = Field(0.1, gt=0, lt=1)
    """A divergence (positive label): the LLM gives the SLM's token at most this probability..."""
    min_p_llm: float = Field(0.5, gt=0, lt=1)
    """...and its own choice at least this one..."""
    divergence_on: Literal["math", "any"] = "math"
    """...and (math) either token holds a digit or an operator."""
    l2: float = Field(1e-2, ge=0)
    """Weight decay of the logistic fit (1e-2 was best of 1e-4 ... 1e-1 in cross-validation)."""
    folds: int = Field(5, ge=2)
    """Cross-validation folds (by question) that measure the head against the entropy signal."""
    probe_head_tau: float = Field(0.1, gt=0, lt=1)
    probe_entropy_tau: float = Field(0.3, gt=0, lt=1)
    """fix-probe: the head@tau and entropy@tau whose first call is tried on each wrong answer."""
    fixed_n: int = Field(16, ge=1)
    max_relays: int = Field(4, ge=0)
    """N and relays of the serving policy, for the held-out simulation of where relays would land."""


class TrainConfig(_Section):
    name: str = "custom"
    models: ModelsSection = ModelsSection()
    data: DataSection = DataSection()
    warmup: WarmupSection = WarmupSection()
    sft: SftSection = SftSection()
    grpo: GrpoSection = GrpoSection()
    head: HeadSection = HeadSection()
    seed: int = 0
    out_dir: Path = Path("runs/train")
    """Every stage writes under this folder: warmup/, sft/, grpo/, final/."""

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.grpo.epsilon_high < self.grpo.epsilon:
            raise ValueError("grpo.epsilon_high must be >= grpo.epsilon")
        return self


def recipe_path(recipe: str) -> Path:
    """A recipe name (smoke, cpu, gpu) or a path to a YAML file."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        return path
    named = RECIPES_DIR / f"{recipe}.yaml"
    if not named.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
        raise UserError(f"unknown recipe {recipe!r}; choose one of {known} or give a .yaml path")
    return named


def load_train_config(recipe: str = "cpu", overrides: list[str] | None = None) -> TrainConfig:
    return load_config(TrainConfig, recipe_path(recipe), env_prefix="RELAY_TRAIN__", overrides=overrides or [])
