"""Sequence alignment primitives of engine.md §4.3-4.4.

The gate similarity is LCS-based (RapidFuzz); the block alignment is difflib's recursive
longest-match with ``autojunk=False`` — the two differ on purpose (D-9: for some inputs
2·|matches|/(|p|+|s|) is below the gate similarity).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    """RapidFuzz ratio of the space-joined sequences, as a fraction (engine.md §4.3, character mode)."""
    return float(fuzz.ratio(" ".join(pattern), " ".join(state))) / 100.0


def token_ratio_percent(a: str, b: str) -> float:
    """Character ratio of two tokens in percent (fuzzy token matching, engine.md §4.15.1)."""
    if a == b:
        return 100.0
    return float(fuzz.ratio(a, b))


def matching_blocks(
    pattern: Sequence[str], state: Sequence[str], tick: Callable[[], None] | None = None, tick_every: int = 256
) -> list[Block]:
    """Recursive longest-block alignment of pattern against state, adjacent blocks merged.

    This is exactly difflib's ``SequenceMatcher(None, pattern, state, autojunk=False)
    .get_matching_blocks()`` (engine.md §4.4's definition) minus the final dummy block: the same
    search and tie-breaks, without the junk and popularity bookkeeping that never applies here
    and without building a matcher object per candidate (a test compares the two).
    ``tick`` is called every ``tick_every`` pattern positions (it may raise to stop a long
    alignment).
    """
    b2j: dict[str, list[int]] = {}
    for j, x in enumerate(state):
        b2j.setdefault(x, []).append(j)
    nothing: list[int] = []
    queue = [(0, len(pattern), 0, len(state))]
    found: list[Block] = []
    while queue:
        alo, ahi, blo, bhi = queue.pop()
        # Longest common run in pattern[alo:ahi] x state[blo:bhi]; earliest in pattern, then state.
        besti, bestj, bestsize = alo, blo, 0
        j2len: dict[int, int] = {}
        for i in range(alo, ahi):
            if tick is not None and i % tick_every == 0:
                tick()
            newj2len: dict[int, int] = {}
            for j in b2j.get(pattern[i], nothing):
                if j < blo:
                    continue
                if j >= bhi:
                    break
                k = newj2len[j] = j2len.get(j - 1, 0) + 1
                if k > bestsize:
                    besti, bestj, bestsize = i - k + 1, j - k + 1, k
            j2len = newj2len
        if bestsize:
            found.append((besti, bestj, bestsize))
            if alo < besti and blo < bestj:
                queue.append((alo, besti, blo, bestj))
            if besti + bestsize < ahi and bestj + bestsize < bhi:
                queue.append((besti + bestsize, ahi, bestj + bestsize, bhi))
    found.sort()
    merged: list[Block] = []
    i1 = j1 = k1 = 0
    for i2, j2, k2 in found:
        if i1 + k1 == i2 and j1 + k1 == j2:
            k1 += k2
        else:
            if k1:
                merged.append((i1, j1, k1))
            i1, j1, k1 = i2, j2, k2
    if k1:
        merged.append((i1, j1, k1))
    return merged
