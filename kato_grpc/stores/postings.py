"""One symbol's postings in a KB index (``index.py``): the patterns containing it, as
compact typed arrays, copied on write between an index and its clones."""

from __future__ import annotations

from array import array

import numpy as np

from kato_grpc.engine.knowledge import PostingArrays


class Postings:
    """One symbol's postings: four parallel int32 arrays, and their numpy copy when asked.

    ``owner`` is the token of the index allowed to change it: a clone shares its source's
    postings and copies one before changing it (copy on write), so readers of the source
    never see a posting change under them. A token, not the index: no reference cycle, so an
    evicted index is freed by reference counting even when its objects were frozen out of the
    cyclic GC (server/kato_server/memory_policy.py)."""

    __slots__ = ("_arrays", "counts", "event_lengths", "ids", "owner", "positions")

    def __init__(self, owner: int) -> None:
        self.owner = owner
        self.ids = array("i")
        self.counts = array("i")
        self.positions = array("i")
        self.event_lengths = array("i")
        self._arrays: PostingArrays | None = None

    @staticmethod
    def of(owner: int, arrays: PostingArrays) -> Postings:
        """Postings holding ``arrays`` (int32), which become their numpy copy as they are."""
        new = Postings(owner)
        new.ids, new.counts, new.positions, new.event_lengths = (array("i", c.tobytes()) for c in arrays)
        new._arrays = arrays
        return new

    def copy(self, owner: int) -> Postings:
        new = Postings(owner)
        new.ids, new.counts, new.positions, new.event_lengths = (
            array("i", c) for c in (self.ids, self.counts, self.positions, self.event_lengths)
        )
        return new

    def add(self, pattern_id: int, count: int, position: int, event_length: int) -> None:
        self.ids.append(pattern_id)
        self.counts.append(count)
        self.positions.append(position)
        self.event_lengths.append(event_length)
        self._arrays = None

    def arrays(self) -> PostingArrays:
        if self._arrays is None:
            self._arrays = PostingArrays(
                *(np.array(c, dtype=np.int32) for c in (self.ids, self.counts, self.positions, self.event_lengths))
            )
        return self._arrays
