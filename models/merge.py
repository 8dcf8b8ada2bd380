"""Merging a LoRA adapter into its base model: what `relay models pull` does for a trained SLM.

The merged folder is a plain Hugging Face model (fp32, the base's tokenizer files), so the ONNX
exporter and the rest of the edge never need to know about adapters. An adapter that does not
fit its base (other architecture, other shapes) is one clear error, and nothing is published.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from common.errors import UserError
from models.identity import TOKENIZER_FILES

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_digest(adapter_dir: Path) -> str:
    """sha256 over the adapter's config and weights: a changed adapter re-merges."""
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        path = Path(adapter_dir) / name
        if not path.is_file():
            raise UserError(f"adapter folder {adapter_dir} lacks {name}")
        digest.update(name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def merge_adapter(base_dir: Path, adapter_dir: Path, out: Path) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    try:
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(f"adapter {adapter_dir} does not merge into {base_dir}: {str(exc).splitlines()[0]}") from None
    merged.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (Path(base_dir) / name).is_file():
            shutil.copy2(Path(base_dir) / name, out / name)
    return {"lora_r": config.get("r"), "base_model": str(base_dir)}
