"""The SLM's tokenizer seen as data: token id -> bytes, special ids, EOS ids, the chat template.

The relay loop detects `<call>N</call>` on the byte stream of generated tokens, and the
detokenizer streams text without splitting UTF-8 characters; both need each token's exact bytes.
Byte-level BPE (Qwen, Llama 3, GPT-2) maps every token to bytes exactly; SentencePiece-style
vocabularies (`▁` for spaces, `<0xNN>` byte fallback) are handled too.

Only `tokenizers` and `jinja2` are used, so the edge needs neither torch nor transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from common.errors import UserError


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable stand-in character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _is_byte_level(tokenizer_json: dict) -> bool:
    decoder = tokenizer_json.get("decoder") or {}
    kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", []) or []}
    return "ByteLevel" in kinds


def _piece_bytes_sentencepiece(piece: str) -> bytes:
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("▁", " ").encode()


@dataclass
class Vocab:
    """Token bytes and special ids of one tokenizer, plus its chat template."""

    tokenizer: Tokenizer
    token_bytes: list[bytes]
    special_ids: frozenset[int]
    eos_ids: tuple[int, ...]
    chat_template: str
    bos_token: str = ""

    @classmethod
    def load(cls, model_dir: str | Path, vocab_size: int | None = None) -> Vocab:
        model_dir = Path(model_dir)
        tok_file = model_dir / "tokenizer.json"
        if not tok_file.is_file():
            raise UserError(f"model directory {model_dir} has no tokenizer (tokenizer.json)")
        tokenizer = Tokenizer.from_file(str(tok_file))
        tok_json = json.loads(tok_file.read_text())
        config = _read_json(model_dir / "tokenizer_config.json")
        size = max(vocab_size or 0, tokenizer.get_vocab_size(with_added_tokens=True))
        special = {a["id"] for a in tok_json.get("added_tokens", []) if a.get("special")}
        table = _token_bytes(tokenizer, tok_json, size, special)
        return cls(
            tokenizer=tokenizer,
            token_bytes=table,
            special_ids=frozenset(special),
            eos_ids=_eos_ids(model_dir, tokenizer, config),
            chat_template=_chat_template(model_dir, config),
            bos_token=_token_content(config.get("bos_token")),
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes[i] for i in ids if i not in self.special_ids).decode("utf-8", errors="replace")

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message: str) -> None:
            raise jinja2.TemplateError(message)

        env.globals["raise_exception"] = raise_exception
        try:
            template = env.from_string(self.chat_template)
            # enable_thinking=False: Qwen3-style templates run in non-thinking mode, as the paper does.
            return template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                enable_thinking=False,
            )
        except jinja2.TemplateError as exc:
            raise UserError(f"chat template failed: {exc}") from None

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return self.encode(self.render_chat(messages))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _token_content(value: object) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return str(value or "")


def _token_bytes(tokenizer: Tokenizer, tok_json: dict, size: int, special: set[int]) -> list[bytes]:
    byte_level = _is_byte_level(tok_json)
    decoder = _byte_decoder() if byte_level else {}
    added = {a["id"] for a in tok_json.get("added_tokens", [])}
    table: list[bytes] = [b""] * size
    for piece, idx in tokenizer.get_vocab(with_added_tokens=True).items():
        if idx >= size:
            continue
        if idx in added or idx in special:
            table[idx] = piece.encode()
        elif byte_level:
            table[idx] = bytes(decoder[c] for c in piece if c in decoder)
        else:
            table[idx] = _piece_bytes_sentencepiece(piece)
    return table


def _eos_ids(model_dir: Path, tokenizer: Tokenizer, config: dict) -> tuple[int, ...]:
    ids: list[int] = []
    generation = _read_json(model_dir / "generation_config.json")
    eos = generation.get("eos_token_id")
    ids += eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else []
    name = _token_content(config.get("eos_token"))
    if name and (tid := tokenizer.token_to_id(name)) is not None:
        ids.append(tid)
    if not ids:
        raise UserError(f"model directory {model_dir} defines no EOS token")
    return tuple(dict.fromkeys(ids))


def _chat_template(model_dir: Path, config: dict) -> str:
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if not template:
        raise UserError(f"model directory {model_dir} has no chat template")
    return str(template)
