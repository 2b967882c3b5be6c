"""Incidents: one outage across series is one incident; independent anomalies rarely are."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import binom, norm

from maml_anomaly.core.events import build_events
from maml_anomaly.core.incidents import (
    INCIDENT_COLUMNS,
    IncidentRules,
    find_incidents,
    incident_line,
    incidents_schema,
    incidents_text,
    series_steps,
)

HOUR = pd.Timedelta(hours=1)
DAY0 = pd.Timestamp("2024-03-23")
OUTAGE_AT = DAY0 + pd.Timedelta(hours=27)  # 03:00 on the second day


def _panel(seed: int = 0) -> tuple[pd.DataFrame, dict[str, int], list[str]]:
    """Scores of 1,100 hourly series over two days: N(0, 1) noise around y_hat = 0, flagged at |z| >= 3,
    and an outage (y = -10 for three hours) in 240 of the 600 series of cluster "a"."""
    rng = np.random.default_rng(seed)
    sizes = {"a": 600, "b": 400, "c": 100}
    ids = np.array([f"{c}{i:03d}" for c, n in sizes.items() for i in range(n)])
    cluster = np.repeat(list(sizes), list(sizes.values()))
    ds = DAY0 + HOUR * np.arange(48)
    y = rng.standard_normal((ids.size, ds.size))
    outage_ids = ids[:600][rng.choice(600, 240, replace=False)]
    hit = np.isin(ids, outage_ids)
    y[np.ix_(hit, np.arange(27, 30))] = -10.0
    p = 2 * norm.sf(np.abs(y))
    scores = pd.DataFrame(
        {
            "unique_id": np.repeat(ids, ds.size),
            "ds": np.tile(ds, ids.size),
            "y": y.ravel(),
            "y_hat": 0.0,
            "score": np.abs(y).ravel(),
            "p_value": p.ravel(),
            "is_anomaly": (np.abs(y) >= 3).ravel(),
            "cluster": np.repeat(cluster, ds.size),
        }
    )
    return scores, sizes, sorted(outage_ids.tolist())


def test_an_outage_across_series_is_one_incident_with_the_right_series_count():
    scores, sizes, outage_ids = _panel()
    events = build_events(scores)
    found = find_incidents(events, HOUR, cluster_sizes=sizes)
    inc = found.incidents
    assert len(inc) == 1
    row = inc.iloc[0]
    # the truth, read off the events: every series of "a" with a down event starting in the outage's hour
    truth = events[(events["cluster"] == "a") & (events["direction"] == "down") & (events["start"] == OUTAGE_AT)]
    assert set(outage_ids) <= set(truth["unique_id"])
    assert row["n_series"] == truth["unique_id"].nunique() and 240 <= row["n_series"] <= 245
    assert row["direction"] == "down" and row["start"] == OUTAGE_AT and row["end"] >= OUTAGE_AT + 2 * HOUR
    assert list(row["clusters"]) == ["a"] and row["cluster_share"][0] == pytest.approx(row["n_series"] / 600)
    assert len(row["top_series"]) == 5 and set(row["top_series"]) <= set(outage_ids)
    member = found.incident_ids() == row["incident_id"]
    assert set(events["unique_id"][member]) == set(truth["unique_id"])
    assert incidents_text(inc).startswith(
        f"1 incident: {row['n_series']} series of a ({row['n_series'] / 600:.0%}) down at"
    )


def _random_starts(rng: np.random.Generator, sizes: dict[str, int], rate: float) -> pd.DataFrame:
    """Independent anomalies: each series starts an event with probability ``rate``, at a uniform hour."""
    ids = np.array([f"{c}-{i}" for c, n in sizes.items() for i in range(n)])
    cluster = np.repeat(list(sizes), list(sizes.values()))
    pick = rng.random(ids.size) < rate
    n = int(pick.sum())
    start = DAY0 + HOUR * rng.integers(0, 24, n)
    return pd.DataFrame(
        {
            "unique_id": ids[pick],
            "start": start,
            "end": start,
            "peak_ds": start,
            "peak_score": 3 + rng.random(n),
            "direction": rng.choice(["up", "down"], n),
            "severity": 3 + rng.random(n),
            "cluster": cluster[pick],
        }
    )


def _expected_hot_windows(events: pd.DataFrame, rules: IncidentRules, windows: int) -> float:
    """Hot windows expected under independent uniform starts, given each unit's total T: W P(Bin(T, 1/W) >= k*)."""
    expected = 0.0
    for total in events.groupby(["cluster", "direction"]).size().to_numpy():  # a few dozen units
        k = np.arange(rules.min_series, total + 1)
        ok = binom.sf(k - 1, total, 1 / windows) <= rules.alpha
        if ok.any():
            expected += windows * binom.sf(k[ok][0] - 1, total, 1 / windows)
    return expected


def test_independent_anomalies_give_spurious_incidents_at_the_stated_rate():
    rng = np.random.default_rng(7)
    sizes = {f"k{i:02d}": int(n) for i, n in enumerate(rng.integers(200, 4000, 40))}
    rules = IncidentRules(alpha=0.01)  # loose, so the expected count is large enough to test
    observed, expected, bound, naive = 0, 0.0, 0.0, 0
    for _ in range(5):
        events = _random_starts(rng, sizes, rate=0.02)
        found = find_incidents(events, HOUR, span=(DAY0, DAY0 + 23 * HOUR), rules=rules)
        observed += found.hot_windows
        expected += _expected_hot_windows(events, rules, 24)
        bound += rules.alpha * 24 * 2 * len(sizes)  # alpha x windows: the module's stated ceiling
        naive += int((events.groupby(["cluster", "direction", "start"])["unique_id"].nunique() >= 2).sum())
        assert len(found.incidents) <= found.hot_windows
    assert 10 < expected <= bound
    assert abs(observed - expected) <= 4 * np.sqrt(expected) + 2
    assert naive > 20 * expected  # "two series at once" alone would call most windows an incident
    # the default alpha on the same kind of data: at most a stray one
    events = _random_starts(rng, sizes, rate=0.02)
    assert find_incidents(events, HOUR, span=(DAY0, DAY0 + 23 * HOUR)).hot_windows <= 1


def test_empty_result_has_the_schema_and_writes(tmp_path):
    scores, sizes, _ = _panel()
    for events in (build_events(scores.iloc[:0]), build_events(scores.assign(is_anomaly=False))):
        found = find_incidents(events, HOUR, cluster_sizes=sizes)
        assert tuple(found.incidents.columns) == INCIDENT_COLUMNS and len(found.incidents) == 0
        assert found.event_incident.shape == (0,)
        table = pa.Table.from_pandas(found.incidents, schema=incidents_schema(pa.string()), preserve_index=False)
        pq.write_table(table, tmp_path / "empty.parquet")
        assert pq.read_schema(tmp_path / "empty.parquet").names == list(INCIDENT_COLUMNS)
    assert incidents_text(found.incidents) == "0 incidents"


def test_incidents_write_with_their_schema(tmp_path):
    scores, sizes, _ = _panel()
    inc = find_incidents(build_events(scores), HOUR, cluster_sizes=sizes).incidents
    table = pa.Table.from_pandas(inc, schema=incidents_schema(pa.string()), preserve_index=False)
    pq.write_table(table, tmp_path / "inc.parquet")
    back = pd.read_parquet(tmp_path / "inc.parquet")
    assert back["incident_id"].tolist() == inc["incident_id"].tolist()
    assert list(back["top_series"].iloc[0]) == list(inc["top_series"].iloc[0])


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(
        **{c: frame[c].map(tuple) for c in ("clusters", "cluster_series", "cluster_share", "top_series")}
    )


def test_row_order_does_not_matter():
    scores, sizes, _ = _panel(seed=3)
    events = build_events(scores)
    base = find_incidents(events, HOUR, cluster_sizes=sizes)
    perm = np.random.default_rng(0).permutation(len(events))
    shuffled = find_incidents(events.iloc[perm].reset_index(drop=True), HOUR, cluster_sizes=sizes)
    pd.testing.assert_frame_equal(_comparable(base.incidents), _comparable(shuffled.incidents))
    np.testing.assert_array_equal(base.incident_ids()[perm], shuffled.incident_ids())


def _events(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["unique_id", "start", "direction", "cluster"])
    frame["start"] = pd.to_datetime(frame["start"])
    return frame.assign(end=frame["start"], peak_ds=frame["start"], peak_score=4.0, severity=5.0)


def test_one_outage_across_clusters_and_steps_is_one_incident():
    t = "2024-03-24 03:00"
    rows = [(f"h{i}", t, "down", "1h-p24") for i in range(6)]
    rows += [(f"m{i}", f"2024-03-24 03:{5 * (i % 2):02d}", "down", "5m-p288") for i in range(6)]
    rows += [("h9", t, "up", "1h-p24"), ("x0", t, "mixed", "1h-p24"), ("x1", t, "mixed", "1h-p24")]
    events = _events(rows)
    step = pd.Series(
        {
            **{f"h{i}": HOUR for i in range(10)},
            **{f"m{i}": pd.Timedelta(minutes=5) for i in range(6)},
            "x0": HOUR,
            "x1": HOUR,
        }
    )
    found = find_incidents(events, step, cluster_sizes={"1h-p24": 10, "5m-p288": 6})
    assert len(found.incidents) == 1
    row = found.incidents.iloc[0]
    assert row["n_series"] == 12 and list(row["clusters"]) == ["1h-p24", "5m-p288"]
    assert list(row["cluster_series"]) == [6, 6] and list(row["cluster_share"]) == [0.6, 1.0]
    assert found.incident_ids()[12:].tolist() == [None, None, None]  # one up, two mixed: stay events
    assert incident_line(row) == "12 series of 1h-p24 6 (60%), 5m-p288 6 (100%) down at 2024-03-24 03:00..03:05"


def test_one_window_runs_need_a_share_of_the_cluster():
    """Daily series scored one day: every event is in the one window; only min_share can tell."""
    rows = [(f"d{i}", "2024-03-24", "down", "1d-p7") for i in range(40)]
    events = _events(rows)
    assert len(find_incidents(events, pd.Timedelta(days=1)).incidents) == 0  # no sizes: cannot judge
    assert len(find_incidents(events, pd.Timedelta(days=1), cluster_sizes={"1d-p7": 100}).incidents) == 1
    assert len(find_incidents(events, pd.Timedelta(days=1), cluster_sizes={"1d-p7": 10_000}).incidents) == 0


def test_one_series_is_never_an_incident_and_unknown_steps_stay_events():
    events = _events([("a", "2024-03-24 03:00", "down", "c"), ("a", "2024-03-24 03:02", "down", "c")])
    found = find_incidents(events, pd.Timedelta(minutes=1), cluster_sizes={"c": 1})
    assert len(found.incidents) == 0
    two = _events([("a", "2024-03-24 03:00", "down", "c"), ("b", "2024-03-24 03:00", "down", "c")])
    day = pd.Timedelta(days=1)
    assert len(find_incidents(two, np.array([day, day]), cluster_sizes={"c": 2}).incidents) == 1
    assert len(find_incidents(two, np.array([day, pd.NaT]), cluster_sizes={"c": 2}).incidents) == 0
    assert len(find_incidents(two.assign(direction="mixed"), day, cluster_sizes={"c": 2}).incidents) == 0
    # two of two hourly series at once in a day of 24 windows: P = 1/24, not improbable enough
    assert len(find_incidents(two, HOUR, cluster_sizes={"c": 2}).incidents) == 0


def test_rules_are_checked():
    with pytest.raises(ValueError):
        IncidentRules(min_series=1)
    with pytest.raises(ValueError):
        IncidentRules(alpha=0)


def test_series_steps_are_the_smallest_gap_of_each_series():
    ds = pd.to_datetime(
        [
            "2024-01-01 00:00",
            "2024-01-01 02:00",
            "2024-01-01 03:00",
            "2024-01-01 00:00",
            "2024-01-01 00:05",
            "2024-01-02 00:00",
        ]
    )
    steps = series_steps(["h", "h", "h", "m", "m", "d"], ds)
    assert steps["h"] == HOUR and steps["m"] == pd.Timedelta(minutes=5) and pd.isna(steps["d"])
