"""The `<call>N</call>` command on a token stream: detect it, cut it out, or forbid it.

The command is plain text (no special tokens), so BPE may split it anywhere and a token may carry
bytes before `<call>` or after `</call>`. Everything here works on token *bytes*:

- `CommandScanner` finds complete commands (and malformed ones) as tokens arrive.
- `cut_commands` builds the LLM's view of a stretch of SLM tokens: tokens wholly outside every
  command pass through unchanged (same ids); the bytes of boundary tokens that lie outside the
  command are re-encoded; the command's own bytes disappear. So the LLM context is the SLM's text
  with each command deleted, and it only ever grows (append-only), keeping the cloud cache valid.
- `CommandMask` bans the tokens that would start a command, for SLM-only continuation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

COMMAND_RE = re.compile(rb"<call>\s*(\d+)\s*</call>")
OPEN = b"<call>"
CLOSE = b"</call>"
_MAX_N_DIGITS = 9  # more digits than this is "huge": clamped, never parsed into a giant int
# A tag around a number that is not a command: `< call>4</call>`, `<line>4</line>`. A policy that
# wants to call once its relays are spent (the mask bans `<call>`) writes these; they are plain
# tokens, so training has to price them or it learns them.
_NEAR_MISS_RE = re.compile(rb"<\s*/?\s*[A-Za-z_]{1,12}\s*>\s*\d+\s*<\s*/\s*[A-Za-z_]{1,12}\s*>")


@dataclass(frozen=True)
class Command:
    start: int
    """Byte offset of `<call>` in the scanned buffer."""
    end: int
    """Byte offset just past `</call>`."""
    n: int


@dataclass(frozen=True)
class Malformed:
    start: int
    end: int
    text: str


class CommandScanner:
    """Incremental scan of a growing byte buffer for `<call>N</call>` commands."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self._scan_from = 0

    def open_command_pending(self) -> bool:
        """True while the unscanned text holds a `<call` that no `</call>` has closed yet."""
        return self.buffer.find(b"<call", self._scan_from) >= 0

    def push(self, data: bytes) -> Command | Malformed | None:
        """Append a token's bytes; return the command it completed, if any."""
        self.buffer += data
        close = self.buffer.find(CLOSE, max(self._scan_from, len(self.buffer) - len(data) - len(CLOSE)))
        if close < 0:
            return None
        end = close + len(CLOSE)
        opening = self.buffer.rfind(OPEN, self._scan_from, close)
        self._scan_from = end
        match = COMMAND_RE.fullmatch(bytes(self.buffer[opening:end])) if opening >= 0 else None
        if match is None:
            start = opening if opening >= 0 else close
            return Malformed(start, end, bytes(self.buffer[start:end]).decode("utf-8", "replace"))
        digits = match.group(1)
        n = int(digits) if len(digits) <= _MAX_N_DIGITS else 10**_MAX_N_DIGITS
        return Command(opening, end, n)


def count_calls(text: str) -> int:
    """How many valid commands with N > 0 the text holds (served or not)."""
    return sum(int(m.group(1)) > 0 for m in COMMAND_RE.finditer(text.encode()))


def count_near_misses(text: str) -> int:
    """How many command look-alikes (not valid `<call>N</call>` commands) the text holds."""
    return sum(not COMMAND_RE.fullmatch(m.group()) for m in _NEAR_MISS_RE.finditer(text.encode()))


def cut_commands(
    token_ids: Sequence[int],
    token_bytes: Sequence[bytes],
    spans: Sequence[tuple[int, int]],
    encode: Callable[[str], list[int]],
) -> list[int]:
    """The token ids of `token_ids` with the byte ranges `spans` deleted (see module docstring).

    `spans` are byte offsets into the concatenated bytes of `token_ids`.
    """
    out: list[int] = []
    pending = bytearray()  # leftover bytes of boundary tokens, re-encoded as one piece
    offset = 0
    for tid in token_ids:
        data = token_bytes[tid]
        start, end = offset, offset + len(data)
        offset = end
        overlapping = [(s, e) for s, e in spans if s < end and e > start]
        if not overlapping:
            if pending:
                out += encode_bytes(bytes(pending), token_bytes, encode)
                pending.clear()
            out.append(tid)
            continue
        keep = bytearray()
        for pos, byte in enumerate(data, start=start):
            if not any(s <= pos < e for s, e in overlapping):
                keep.append(byte)
        pending += keep
    if pending:
        out += encode_bytes(bytes(pending), token_bytes, encode)
    return out


def encode_bytes(data: bytes, token_bytes: Sequence[bytes], encode: Callable[[str], list[int]]) -> list[int]:
    """Token ids for exactly `data`. A command boundary can split a UTF-8 character (its first
    bytes in one token, the rest before `<call>`); decoding with replacement would hand the LLM a
    U+FFFD. Valid text is encoded as usual, stray bytes become the byte-level tokens that hold
    them, so the LLM's context has the same bytes as the SLM's text."""
    out: list[int] = []
    byte_ids: dict[bytes, int] | None = None
    while data:
        try:
            return out + encode(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            if exc.start:
                out += encode(data[: exc.start].decode("utf-8"))
            if byte_ids is None:
                byte_ids = {b: i for i, b in enumerate(token_bytes) if len(b) == 1}
            for byte in data[exc.start : exc.end]:
                one = bytes([byte])
                out += [byte_ids[one]] if one in byte_ids else encode(one.decode("utf-8", "replace"))
            data = data[exc.end :]
    return out


class CommandMask:
    """Logit mask that makes the SLM unable to write `<call>`, and its opposite, a call bias.

    A token is banned if it contains `<call`, or if it completes `<call` after the text so far
    (the text ends with `<ca` and the token starts with `ll`, ...). The bias raises those tokens and
    the ones that start a command (` <`, `<c`, ...). Index sets are built once.
    """

    def __init__(self, token_bytes: Sequence[bytes]) -> None:
        needle = b"<call"
        self._always = np.array([i for i, b in enumerate(token_bytes) if needle in b], dtype=np.int64)
        self._after_prefix: dict[bytes, np.ndarray] = {}
        for k in range(1, len(needle)):
            rest = needle[k:]
            ids = [i for i, b in enumerate(token_bytes) if b.startswith(rest) or rest.startswith(b) and b]
            self._after_prefix[needle[:k]] = np.array(ids, dtype=np.int64)
        prefixes = [needle[:k] for k in range(1, len(needle) + 1)]
        openers = [i for i, b in enumerate(token_bytes) if any(b.endswith(p) for p in prefixes) or needle in b]
        self._openers = np.array(openers, dtype=np.int64)

    def banned(self, tail: bytes) -> np.ndarray:
        """Token ids to ban given the last bytes of the SLM's text."""
        extra = [ids for prefix, ids in self._after_prefix.items() if tail.endswith(prefix)]
        return np.concatenate([self._always, *extra]) if extra else self._always

    def boost(self, logits: np.ndarray, tail: bytes, bias: float) -> np.ndarray:
        """`logits` with `bias` added to every token that starts or continues `<call` here."""
        boosted = logits.copy()
        boosted[np.union1d(self._openers, self.banned(tail))] += bias
        return boosted

    def apply(self, logits: np.ndarray, tail: bytes) -> np.ndarray:
        masked = logits.copy()
        masked[self.banned(tail)] = -np.inf
        return masked
