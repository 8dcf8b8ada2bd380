"""Incremental detokenizer: token ids in, text out, never half a UTF-8 character.

A byte-level BPE token can end inside a multi-byte character (an emoji is often 2-4 tokens).
Decoding token by token would print replacement characters; instead the token bytes go through an
incremental UTF-8 decoder that holds back an incomplete sequence until the next token completes it.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class IncrementalDetokenizer:
    def __init__(self, token_bytes: Sequence[bytes], special_ids: frozenset[int] = frozenset()) -> None:
        self._token_bytes = token_bytes
        self._special_ids = special_ids
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Text completed by this token ("" while a character is still incomplete)."""
        if token_id in self._special_ids:
            return ""
        return self._decoder.decode(self._token_bytes[token_id])

    def flush(self) -> str:
        """Whatever is held back at the end of the stream (a dangling partial character)."""
        return self._decoder.decode(b"", final=True)
