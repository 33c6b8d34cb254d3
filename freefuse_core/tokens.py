"""Token positions of each subject's activation words (method step 1).

`I_l` = every token index whose characters overlap an occurrence of one of subject `l`'s
activation words in the prompt: case-insensitive, on word boundaries, every occurrence. The
token pieces come from the model's own T5 tokenizer with character offsets, so text token `t`
of the model is piece `t`.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenPiece:
    """One T5 token: its text and its character span `[start, end)` in the prompt."""

    text: str
    start: int
    end: int


def _pattern(word: str) -> re.Pattern:
    """`word` case-insensitively, its inner whitespace as any whitespace run, not touching a letter or digit."""
    parts = [re.escape(p) for p in word.split()]
    return re.compile(r"(?<![^\W_])" + r"\s+".join(parts) + r"(?![^\W_])", re.IGNORECASE)


def _overlaps(piece: TokenPiece, start: int, end: int) -> bool:
    """A piece with characters in `[start, end)`; special tokens (empty spans) never overlap."""
    return piece.start < piece.end and piece.start < end and piece.end > start


def find_subject_tokens(prompt: str, pieces: Sequence[TokenPiece],
                        subjects: Sequence[tuple[str, Sequence[str]]]) -> list[list[int]]:
    """Per subject, the sorted indices of the pieces covered by its activation words."""
    owners: dict[int, str] = {}
    found = []
    for name, words in subjects:
        if not words:
            raise ValueError(f"subject '{name}' has no activation word")
        indices: set[int] = set()
        for word in words:
            if not word.strip():
                raise ValueError(f"subject '{name}' has an empty activation word")
            matches = list(_pattern(word).finditer(prompt))
            if not matches:
                raise ValueError(f"activation word '{word}' of subject '{name}' is not in the prompt")
            for match in matches:
                hit = {i for i, p in enumerate(pieces) if _overlaps(p, match.start(), match.end())}
                if not hit:
                    raise ValueError(f"activation word '{word}' of subject '{name}' covers no token")
                indices |= hit
        for i in sorted(indices):
            if i in owners:
                raise ValueError(f"subjects '{owners[i]}' and '{name}' claim the same token "
                                 f"'{pieces[i].text}' (index {i})")
            owners[i] = name
        found.append(sorted(indices))
    return found
