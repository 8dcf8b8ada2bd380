"""`relay train ship`: from a trained adapter to an SLM the edge runs.

1. merge the adapter into the recipe's base SLM (`models.merge`, cached by adapter digest);
2. export the merged model to ONNX fp32 and int8 (`edge.export`, verified against torch);
3. load the int8 export in the edge runtime and let it answer one question with `learned`,
   cloud off, to prove it runs and to show whether it writes a command;
4. copy the adapter to `models/adapters/<name>/` when `--publish` is given (the registry's
   `adapter` source points there, and `relay models pull` repeats steps 1-2 on a user's machine).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edge.export import ensure_onnx
from models.cache import is_complete, locked, publish_dir
from models.merge import ADAPTER_FILES, adapter_digest, merge_adapter
from models.supply import cache_root, ensure_model
from training.config import TrainConfig

PROBE_QUESTION = "A baker fills 5 trays with 12 muffins each and sells 38 muffins. How many muffins are left?"


def merged_dir(config: TrainConfig, adapter: Path) -> Path:
    base = ensure_model(config.models.slm, cache_dir=config.models.cache_dir)
    digest = adapter_digest(adapter)
    root = cache_root(config.models.cache_dir)
    target = root / "hf" / f"{base.name}-relay-{digest[:10]}"
    expect = {"adapter": digest, "base": str(base)}
    if not is_complete(target, expect):
        with locked(root / "locks" / f"{target.name}.lock"):
            if not is_complete(target, expect):
                publish_dir(target, lambda tmp: merge_adapter(base, adapter, tmp), expect)
    return target


def probe(onnx_dir: Path) -> str:
    """One greedy answer in the edge runtime with the cloud off (commands masked): proof it runs."""
    from edge.relay.driver import RelayEngine
    from edge.relay.settings import RelaySettings
    from edge.runtime import OnnxSlm
    from edge.vocab import Vocab
    from evaluation.prompts import messages_for

    slm = OnnxSlm.load(onnx_dir, provider="auto")
    engine = RelayEngine(slm, Vocab.load(onnx_dir, vocab_size=slm.vocab_size), None)
    stream = engine.answer(messages_for(PROBE_QUESTION), RelaySettings(policy="learned", max_new_tokens=160))
    for _ in stream:
        pass
    return stream.text


def ship(config: TrainConfig, adapter: Path, *, publish_as: str | None = None) -> str:
    merged = merged_dir(config, adapter)
    root = cache_root(config.models.cache_dir)
    onnx = ensure_onnx(merged, root, "int8")
    lines = [f"merged: {merged}", f"onnx int8: {onnx}", "probe answer (cloud off):", probe(onnx)]
    if publish_as:
        dest = Path(__file__).resolve().parents[1] / "models" / "adapters" / publish_as
        dest.mkdir(parents=True, exist_ok=True)
        for name in ADAPTER_FILES:
            shutil.copy2(adapter / name, dest / name)
        lines.append(f"adapter copied to {dest}")
    return "\n".join(lines)
