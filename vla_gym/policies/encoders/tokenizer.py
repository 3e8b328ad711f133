"""Hashed-word tokenizer: stable ids for any word, with no vocabulary to build or ship.

Held-out synonyms ("sphere", "tin") still get an id of their own, and the ids do not depend on
the process (crc32, not Python's salted ``hash``), so a checkpoint means the same thing
everywhere. Also the tokenizer of random-init HF models, which have no pretrained vocabulary.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

PAD_ID = 0
END_ID = 1
_FIRST_WORD_ID = 2
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


class HashedWordTokenizer:
    """Lower-cased words and punctuation -> ids in ``[2, vocab_size)``; 0 pads, 1 ends."""

    def __init__(self, vocab_size: int, max_tokens: int) -> None:
        if vocab_size <= _FIRST_WORD_ID:
            raise ValueError(f"vocab_size must be > {_FIRST_WORD_ID}, got {vocab_size}")
        self.vocab_size = vocab_size
        self.max_tokens = max_tokens

    def word_id(self, word: str) -> int:
        span = self.vocab_size - _FIRST_WORD_ID
        return _FIRST_WORD_ID + zlib.crc32(word.encode("utf-8")) % span

    def ids(self, text: str) -> list[int]:
        words = _WORD.findall(text.lower())[: self.max_tokens - 1]
        return [self.word_id(w) for w in words] + [END_ID]

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, mask), both ``(len(texts), T)`` with T the longest text (<= max_tokens)."""
        rows = [self.ids(t) for t in texts]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = True
        return ids, mask

    def fixed(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Like ``__call__`` but always ``max_tokens`` wide (fixed-shape observation spaces)."""
        ids, mask = self(texts)
        pad = self.max_tokens - ids.shape[1]
        return np.pad(ids, ((0, 0), (0, pad))), np.pad(mask, ((0, 0), (0, pad)))
