"""Sequence alignment primitives of spec 4.3-4.4.

The gate similarity is LCS-based (RapidFuzz); the block alignment is difflib's recursive
longest-match with ``autojunk=False`` — the two differ on purpose (D-9, Q-MATCH-1).
"""

from __future__ import annotations

from collections.abc import Sequence
from difflib import SequenceMatcher

from rapidfuzz import fuzz
from rapidfuzz.distance import LCSseq

Block = tuple[int, int, int]


def token_similarity(pattern: Sequence[str], state: Sequence[str]) -> float:
    """``2·LCS(p, s) / (|p| + |s|)`` over whole tokens; 0 when both are empty."""
    total = len(pattern) + len(state)
    if total == 0:
        return 0.0
    return 2.0 * LCSseq.similarity(pattern, state) / total


def character_similarity(pattern: Sequence[str], state: Sequence[str]) -> float:
    """RapidFuzz ratio of the space-joined sequences, as a fraction (spec 4.3, character mode)."""
    return float(fuzz.ratio(" ".join(pattern), " ".join(state))) / 100.0


def token_ratio_percent(a: str, b: str) -> float:
    """Character ratio of two tokens in percent (fuzzy token matching, spec 4.15.1)."""
    if a == b:
        return 100.0
    return float(fuzz.ratio(a, b))


def matching_blocks(pattern: Sequence[str], state: Sequence[str]) -> list[Block]:
    """Recursive longest-block alignment of pattern against state, adjacent blocks merged.

    difflib with ``autojunk=False`` and no junk function is exactly spec 4.4's definition.
    """
    blocks = SequenceMatcher(None, pattern, state, autojunk=False).get_matching_blocks()
    return [(b.a, b.b, b.size) for b in blocks[:-1]]


def flat_extras_count(present_flat: Sequence[str], state: Sequence[str]) -> int:
    """Number of state symbols on the insert/replace side of present_flat vs state (snr's E_x)."""
    count = 0
    for tag, _i1, _i2, j1, j2 in SequenceMatcher(None, present_flat, state, autojunk=False).get_opcodes():
        if tag in ("insert", "replace"):
            count += j2 - j1
    return count
