"""The sample generator: deterministic, realistic in shape, and its labels agree with its values."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maml_anomaly.sample import ANOMALY_KINDS, make_sample, write_sample

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample():
    return make_sample(seed=3, n_series=40, return_info=True)


def test_same_seed_same_data_other_seed_other_data():
    a = make_sample(seed=7, n_series=15)
    b = make_sample(seed=7, n_series=15)
    c = make_sample(seed=8, n_series=15)
    for x, y in zip(a, b):
        pd.testing.assert_frame_equal(x, y)
    assert not a[0]["y"].equals(c[0]["y"])


def test_schema_and_realism(sample):
    values, windows, points, info = sample
    assert list(values.columns) == ["unique_id", "ds", "y"]
    assert values["y"].dtype == np.float64 and values["ds"].dtype == "datetime64[ns]"
    assert not values.duplicated(["unique_id", "ds"]).any()
    assert values["unique_id"].nunique() == 40
    assert set(info["period"]) == {0, 7, 24, 168, 288}
    assert info["level"].min() < 1 and info["level"].max() > 1e3  # scales span orders of magnitude
    assert values["y"].isna().sum() > 0  # some NaNs
    assert set(windows["kind"]) <= set(ANOMALY_KINDS) and len(set(windows["kind"])) >= 4
    # every series ends on the same calendar day (the day daily-score would score)
    assert values.groupby("unique_id")["ds"].max().dt.normalize().nunique() == 1


def test_labels_agree_with_values(sample):
    values, windows, points, _ = sample
    assert (windows["start"] <= windows["end"]).all()
    # every labelled point is an observed (non-NaN) row of its series
    m = points.merge(values, on=["unique_id", "ds"], how="left")
    assert m["y"].notna().all()
    # every point lies in a window of its series with the same kind, and every window holds points
    j = points.merge(windows, on="unique_id", suffixes=("", "_w"))
    j = j[(j["ds"] >= j["start"]) & (j["ds"] <= j["end"])]
    assert len(j.drop_duplicates(["unique_id", "ds"])) == len(points)
    assert (j["kind"] == j["kind_w"]).all()
    assert len(j.drop_duplicates(["unique_id", "start"])) == len(windows)
    # windows of a series do not overlap
    w = windows.sort_values(["unique_id", "start"])
    same = w["unique_id"].eq(w["unique_id"].shift())
    assert (w["start"][same] > w["end"].shift()[same]).all()


def test_most_anomalies_in_the_evaluation_period(sample):
    values, windows, _, _ = sample
    last_day = values["ds"].max().normalize()
    recent = windows["start"] >= last_day - pd.Timedelta(days=13)
    assert recent.mean() > 0.7 and (~recent).sum() >= 1  # some in the history too


def test_same_machine_same_bytes(tmp_path):
    """On one machine the generator's files are byte-identical run to run."""
    a = write_sample(tmp_path / "a", n_series=12)
    b = write_sample(tmp_path / "b", n_series=12)
    for name in a:
        assert a[name].read_bytes() == b[name].read_bytes(), name


def assert_same_values(committed: pd.DataFrame, fresh: pd.DataFrame, name: str) -> None:
    """Ids, timestamps and labels exactly; floats to a relative 1e-9.

    numpy's vectorised sin/exp/log/pow may round the last bit differently on another CPU (AVX-512
    or not), so regenerated floats match the committed ones in value, not in bytes.
    """
    assert list(committed.columns) == list(fresh.columns), name
    assert committed.dtypes.equals(fresh.dtypes), name
    assert len(committed) == len(fresh), name
    for col in committed.columns:
        a, b = committed[col], fresh[col]
        if pd.api.types.is_float_dtype(a):
            np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-9, atol=0, err_msg=f"{name}.{col}")
        else:
            assert a.equals(b), f"{name}.{col} differs: regenerate sample_data (python -m maml_anomaly.sample)"


def test_committed_sample_data_is_the_generator_output(tmp_path):
    paths = write_sample(tmp_path)
    assert sum(p.stat().st_size for p in paths.values()) < 2_000_000
    for name, path in paths.items():
        committed = pd.read_parquet(ROOT / "sample_data" / f"{name}.parquet")
        assert_same_values(committed, pd.read_parquet(path), name)


def test_value_comparison_catches_a_changed_value(tmp_path):
    """The tolerance is tight enough to see a change in the 5th significant digit the generator keeps."""
    values = pd.read_parquet(ROOT / "sample_data" / "values.parquet")
    changed = values.copy()
    changed.loc[changed.index[10], "y"] *= 1 + 1e-5
    with pytest.raises(AssertionError):
        assert_same_values(values, changed, "values")
