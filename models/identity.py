"""Tokenizer and chat-template identity of a model folder, and the SLM/LLM pair check.

The edge and the cloud exchange token ids, not text, so the two models must map every id to the
same token and render a conversation identically. The cloud server reports these hashes over gRPC
and the edge compares them with its own; `relay models pull` checks a pair before anyone relies on it.

Standard library only (no torch, no transformers, no tokenizers): the edge imports this module.

What is hashed: the tokenizer's `model` section of `tokenizer.json` (type, vocabulary, merges, and
settings such as byte fallback) plus its added tokens reduced to (id, content, special), which is
the id <-> token mapping. Flags such as `lstrip` or `normalized` on added tokens only change how
text is split, and differ between otherwise identical exports, so they are left out. Merges are
normalized to pairs because tokenizers writes them either as `"a b"` or as `["a", "b"]`. The chat
template is hashed as text with surrounding whitespace stripped; a folder without one hashes as "".
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from common.errors import UserError


def tokenizer_sha256(model_dir: Path) -> str:
    """sha256 of the normalized vocabulary, merges and added tokens of `model_dir/tokenizer.json`."""
    return _sha256_json(_tokenizer_identity(Path(model_dir)))


def chat_template_sha256(model_dir: Path) -> str:
    """sha256 of the folder's chat template (`chat_template.jinja` or `tokenizer_config.json`)."""
    return hashlib.sha256(chat_template(Path(model_dir)).encode()).hexdigest()


def chat_template(model_dir: Path) -> str:
    """The default chat template text, stripped; "" when the folder has none."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8").strip()
    config_file = model_dir / "tokenizer_config.json"
    config = _read_json(config_file) if config_file.is_file() else {}
    template = config.get("chat_template") or ""
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t["name"]: t["template"] for t in template}
        template = named.get("default", "")
    return template.strip()


def check_pair(slm_dir: Path, llm_dir: Path) -> None:
    """Raise `UserError` naming what differs unless the two folders share tokenizer and chat template."""
    slm, llm = _tokenizer_identity(Path(slm_dir)), _tokenizer_identity(Path(llm_dir))
    problems = _tokenizer_differences(slm, llm)
    if chat_template(Path(slm_dir)) != chat_template(Path(llm_dir)):
        problems.append("chat template differs")
    if problems:
        raise UserError(f"SLM {slm_dir} and LLM {llm_dir} cannot relay token ids: {'; '.join(problems)}")


def _tokenizer_identity(model_dir: Path) -> dict[str, Any]:
    file = model_dir / "tokenizer.json"
    if not file.is_file():
        raise UserError(f"model directory {model_dir} has no tokenizer.json (needed to compare tokenizers)")
    data = _read_json(file)
    model = dict(data.get("model") or {})
    if "merges" in model:
        model["merges"] = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model["merges"]]
    added = sorted(
        (
            {"id": t["id"], "content": t["content"], "special": t.get("special", False)}
            for t in data.get("added_tokens") or []
        ),
        key=lambda t: t["id"],
    )
    return {"model": model, "added_tokens": added}


def _tokenizer_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Human-readable list of what differs between two tokenizer identities (empty when equal)."""
    problems: list[str] = []
    ma, mb = a["model"], b["model"]
    if ma.get("type") != mb.get("type"):
        problems.append(f"tokenizer type differs ({ma.get('type')} vs {mb.get('type')})")
    va, vb = ma.get("vocab") or {}, mb.get("vocab") or {}
    if va != vb:
        changed = sum(1 for tok, i in va.items() if vb.get(tok) != i)
        problems.append(f"vocabulary differs ({len(va)} vs {len(vb)} tokens, {changed} ids differ)")
    if ma.get("merges") != mb.get("merges"):
        problems.append(f"merges differ ({len(ma.get('merges') or [])} vs {len(mb.get('merges') or [])})")
    rest_a = {k: v for k, v in ma.items() if k not in ("type", "vocab", "merges")}
    rest_b = {k: v for k, v in mb.items() if k not in ("type", "vocab", "merges")}
    if rest_a != rest_b:
        keys = sorted(k for k in rest_a.keys() | rest_b.keys() if rest_a.get(k) != rest_b.get(k))
        problems.append(f"tokenizer settings differ ({', '.join(keys)})")
    if a["added_tokens"] != b["added_tokens"]:
        problems.append(_added_token_difference(a["added_tokens"], b["added_tokens"]))
    return problems


def _added_token_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    by_id_a, by_id_b = {t["id"]: t for t in a}, {t["id"]: t for t in b}
    for token_id in sorted(by_id_a.keys() | by_id_b.keys()):
        ta, tb = by_id_a.get(token_id), by_id_b.get(token_id)
        if ta != tb:
            show = lambda t: repr(t["content"]) if t else "none"  # noqa: E731
            return f"added tokens differ (first at id {token_id}: {show(ta)} vs {show(tb)})"
    return "added tokens differ"


def _sha256_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _read_json(file: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {file}: {exc}") from None
