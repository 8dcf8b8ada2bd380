"""Tokenizer and chat-template identity of a model folder, and the SLM/LLM pair check.

The edge and the cloud exchange token ids, not text, so the two models must map every id to the
same token and turn a conversation into the same text. The cloud server reports these hashes over
gRPC and the edge compares them with its own; `relay models pull` checks a pair before anyone relies
on it.

No torch, no transformers, no tokenizers (the edge imports this module); only jinja2, which the
edge already uses to render prompts, imported when a template is hashed.

Tokenizer: the hash covers the `model` section of `tokenizer.json` (type, vocabulary, merges, and
settings such as byte fallback) plus the added tokens reduced to (id, content, special), i.e. the
id <-> token mapping. Flags such as `lstrip` or `normalized` on added tokens only change how text is
split and differ between otherwise identical exports, so they are left out. Merges are normalized
to pairs because tokenizers writes them either as `"a b"` or as `["a", "b"]`.

Chat template: the hash covers what the template *renders* for a fixed set of probe conversations
(the way RelayLLM uses it: system/user/assistant turns, no tools), not its source text. The real
default pair shows why: the 0.5B and 1.5B templates differ only inside the tool-calling branch
(one writes `{{"name": ...}}` with literal double braces), which a relay never renders. A folder
without a template hashes as the empty rendering set.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from common.errors import UserError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
"""The files that make a model folder's tokenizer and chat template (copied with exports, merges)."""


def tokenizer_sha256(model_dir: Path) -> str:
    """sha256 of the normalized vocabulary, merges and added tokens of `model_dir/tokenizer.json`."""
    return _sha256_json(_tokenizer_identity(Path(model_dir)))


def chat_template_sha256(model_dir: Path) -> str:
    """sha256 of what the folder's chat template renders for the probe conversations."""
    return _sha256_json(render_probes(Path(model_dir)))


def chat_template(model_dir: Path) -> str:
    """The default chat template text, stripped; "" when the folder has none."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8").strip()
    template = _tokenizer_config(model_dir).get("chat_template") or ""
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t["name"]: t["template"] for t in template}
        template = named.get("default", "")
    return template.strip()


PROBES: tuple[tuple[str, tuple[tuple[str, str], ...], bool], ...] = (
    ("user", (("user", "What is 3 * 4 - 2? Ünïcödé 你好 🙂"),), True),
    ("system+user", (("system", "Be brief."), ("user", "Hi <call>8</call>")), True),
    (
        "multi-turn",
        (("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Add 2 and 3.\n\nThanks")),
        True,
    ),
    ("finished", (("system", "S"), ("user", "Q"), ("assistant", "A")), False),
)


def render_probes(model_dir: Path) -> list[list[str]]:
    """[probe name, rendered text or `error: ...`] for each probe; [] when there is no template."""
    text = chat_template(model_dir)
    if not text:
        return []
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    config = _tokenizer_config(model_dir)
    specials = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token")}
    try:
        template = env.from_string(text)
    except jinja2.TemplateError as exc:
        return [["parse", f"error: {exc}"]]
    rendered = []
    for name, turns, add_generation_prompt in PROBES:
        messages = [{"role": role, "content": content} for role, content in turns]
        try:
            out = template.render(messages=messages, add_generation_prompt=add_generation_prompt, **specials)
        except jinja2.TemplateError as exc:
            out = f"error: {exc}"
        rendered.append([name, out])
    return rendered


def check_pair(slm_dir: Path, llm_dir: Path) -> None:
    """Raise `UserError` naming what differs unless the two folders share tokenizer and chat template."""
    slm, llm = _tokenizer_identity(Path(slm_dir)), _tokenizer_identity(Path(llm_dir))
    problems = _tokenizer_differences(slm, llm)
    slm_chat, llm_chat = render_probes(Path(slm_dir)), render_probes(Path(llm_dir))
    if slm_chat != llm_chat:
        problems.append(_chat_difference(slm_chat, llm_chat))
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


def _chat_difference(a: list[list[str]], b: list[list[str]]) -> str:
    if not a or not b:
        return f"chat template differs (only the {'LLM' if not a else 'SLM'} has one)"
    for (name, text_a), (_, text_b) in zip(a, b, strict=False):
        if text_a != text_b:
            at = len(os.path.commonprefix([text_a, text_b]))
            return (
                f"chat template renders differently (probe {name!r}: "
                f"{text_a[at : at + 30]!r} vs {text_b[at : at + 30]!r})"
            )
    return "chat template differs"


def _tokenizer_config(model_dir: Path) -> dict[str, Any]:
    file = model_dir / "tokenizer_config.json"
    return _read_json(file) if file.is_file() else {}


def _token_text(value: Any) -> str:
    """A special token as tokenizer_config.json writes it: a string, an AddedToken dict, or null."""
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value or ""


def _sha256_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _read_json(file: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {file}: {exc}") from None


class _DropMistralRegexWarning:
    """transformers' Mistral-regex heuristic misfires on the GGUF-built Qwen tokenizer (its
    pre-tokenizer was checked: it is Qwen2's), and libraries that load it for us (optimum's
    exporter) cannot be told `fix_mistral_regex=False`. Drop that one warning, nothing else."""

    def filter(self, record) -> bool:
        return "incorrect regex pattern" not in record.getMessage()


def quiet_mistral_regex_warning() -> None:
    import logging

    log = logging.getLogger("transformers.tokenization_utils_base")
    if not any(isinstance(f, _DropMistralRegexWarning) for f in log.filters):
        log.addFilter(_DropMistralRegexWarning())
