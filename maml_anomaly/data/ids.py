"""Positions of series ids in a column of millions of them, in bounded memory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


class IdLookup:
    """Positions of ids in a large id column, without a hash table of Python objects.

    pd.Index over 2,000,000 string ids held about 415 MB in the scoring process (the strings and
    the index's hash table); this holds the ids as one Arrow array plus their sorted 64-bit
    hashes (about 45 bytes per id): a query hashes its ids, finds them by binary search and
    confirms each match against the stored id, so a hash collision never maps a wrong series.
    Integer ids are their own sorted keys.
    """

    _HASH_CHUNK = 200_000  # ids turned into Python strings at a time while hashing

    def __init__(self, ids) -> None:
        self.ids = ids if isinstance(ids, pa.Array) else pa.array(ids, from_pandas=True)  # (C,) as stored
        if pa.types.is_dictionary(self.ids.type):
            self.ids = self.ids.cast(self.ids.type.value_type)
        self.dtype = np.dtype(np.int64) if pa.types.is_integer(self.ids.type) else np.dtype(object)
        keys = np.concatenate(
            [np.zeros(0, np.uint64)]
            + [
                self._keys(self.ids.slice(lo, self._HASH_CHUNK).to_numpy(zero_copy_only=False))
                for lo in range(0, len(self.ids), self._HASH_CHUNK)
            ]
        )  # (C,) uint64 hashes, or the integer ids themselves
        self.order = np.argsort(keys, kind="stable")  # (C,) sorted position -> id position
        self.keys = keys[self.order]

    def __len__(self) -> int:
        return len(self.ids)

    def _keys(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.dtype.kind in "iu":
            return ids.astype(np.int64)
        return pd.util.hash_array(ids.astype(object), categorize=False)  # (n,) uint64

    def take(self, pos: np.ndarray) -> np.ndarray:
        """The ids at positions ``pos`` (numpy)."""
        return self.ids.take(np.asarray(pos, np.int64)).to_numpy(zero_copy_only=False)

    def get_indexer(self, ids: np.ndarray) -> np.ndarray:
        """(n,) int64 position of each id, -1 where absent (as ``pd.Index.get_indexer``)."""
        ids = np.asarray(ids)
        if not len(self) or not ids.size:
            return np.full(ids.size, -1, np.int64)
        h = self._keys(ids)
        i = np.minimum(np.searchsorted(self.keys, h), self.keys.size - 1)  # (n,)
        hit = self.keys[i] == h
        # equal hashes form a run in the sorted keys: try each member of the run (almost always one)
        pos = np.full(ids.size, -1, np.int64)
        cand = np.flatnonzero(hit)
        j = i[cand]
        while cand.size:
            at = self.order[j]
            same = pc.equal(self.ids.take(at), pa.array(ids[cand], from_pandas=True)).to_numpy(zero_copy_only=False)
            pos[cand[same]] = at[same]
            nxt = j[~same] + 1
            more = nxt < self.keys.size
            more[more] = self.keys[nxt[more]] == h[cand[~same]][more]
            cand, j = cand[~same][more], nxt[more]
        return pos
