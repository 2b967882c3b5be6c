"""data.ids.IdLookup: positions of ids as pd.Index.get_indexer gives them, hash collisions included."""

import numpy as np
import pandas as pd
import pyarrow as pa

from maml_anomaly.data.ids import IdLookup


def test_matches_pandas_for_strings_and_integers():
    rng = np.random.default_rng(0)
    for ids in (
        np.array([f"s{i}" for i in rng.permutation(5000)], dtype=object),
        rng.permutation(10**6)[:5000].astype(np.int64),
    ):
        query = np.concatenate(
            [
                ids[::3],
                ids[:0] if ids.dtype == object else np.array([-5, 10**7]),
                np.array(["nope", "s-1"], dtype=object) if ids.dtype == object else np.array([], np.int64),
            ]
        )
        got = IdLookup(ids).get_indexer(query)
        np.testing.assert_array_equal(got, pd.Index(ids).get_indexer(query))


def test_hash_collisions_never_map_a_wrong_series(monkeypatch):
    ids = np.array(["a", "b", "c", "d"], dtype=object)
    monkeypatch.setattr(
        IdLookup, "_keys", lambda self, x: np.asarray([hash(v) % 2 for v in x], np.uint64)
    )  # all collide
    lookup = IdLookup(ids)
    np.testing.assert_array_equal(
        lookup.get_indexer(np.array(["d", "a", "zz", "c", "b"], dtype=object)), [3, 0, -1, 2, 1]
    )


def test_take_and_arrow_input():
    lookup = IdLookup(pa.array(["x", "y", "z"]).dictionary_encode())
    assert list(lookup.take([2, 0])) == ["z", "x"] and len(lookup) == 3 and lookup.dtype == object
    assert list(lookup.get_indexer(np.array(["y", "q"], dtype=object))) == [1, -1]
