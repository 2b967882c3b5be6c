"""Alerts: BH q-values, rules that only remove flags, the budget, events, and the pipeline hook."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from synth import tiny_cluster  # noqa: F401 (fixture)
from typer.testing import CliRunner

from maml_anomaly.config import Config
from maml_anomaly.core.alerts import ALERT_COLUMNS, AlertRules, apply_alerts, bh_qvalues
from maml_anomaly.core.events import EVENT_COLUMNS, build_events
from maml_anomaly.data.schemas import SCORE_COLUMNS
from maml_anomaly.errors import ConfigError

# -- BH -------------------------------------------------------------------------------------------


def _bh_reference(p: np.ndarray) -> np.ndarray:
    """The textbook definition, O(m^2): q_i = min over p_j >= p_i of m p_j / rank_j."""
    m = p.size
    rank = np.argsort(np.argsort(p, kind="stable"), kind="stable") + 1
    adj = np.minimum(p * m / rank, 1.0)
    return np.array([adj[p >= p[i]].min() for i in range(m)])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=60))
def test_bh_matches_the_definition(values):
    p = np.array(values)
    np.testing.assert_allclose(bh_qvalues(p), _bh_reference(p), rtol=1e-12, atol=1e-15)


def test_bh_per_group_equals_separate_runs_and_keeps_nan():
    rng = np.random.default_rng(1)
    p = rng.random(500) ** 3
    p[::17] = np.nan
    g = rng.integers(0, 4, 500)
    q = bh_qvalues(p, g)
    assert np.isnan(q[::17]).all()
    for k in range(4):
        sel = (g == k) & np.isfinite(p)
        np.testing.assert_allclose(q[sel], bh_qvalues(p[sel]), rtol=1e-12)
    assert (q[np.isfinite(p)] >= p[np.isfinite(p)] * (1 - 1e-12)).all()  # m p / m may round down


def test_bh_controls_false_discoveries_on_uniform_nulls():
    rng = np.random.default_rng(0)
    null = rng.random(20_000)
    signal = rng.random(400) * 1e-6
    q = bh_qvalues(np.r_[null, signal])
    flags = q <= 0.01
    false = flags[:20_000].sum()
    assert flags[20_000:].all() and false / flags.sum() <= 0.02


# -- rules ----------------------------------------------------------------------------------------


def _frame(n_series=3, n=12, flagged=(), y_sign=None, step="h"):
    """Scores of n points per series, all ok, zero forecast; ``flagged``: (series, position)."""
    ds = pd.date_range("2024-01-01 18:00", periods=n, freq=step)
    rows = []
    for s in range(n_series):
        for j in range(n):
            hit = (s, j) in flagged
            sign = -1.0 if y_sign and (s, j) in y_sign else 1.0
            rows.append(
                {
                    "unique_id": f"s{s}",
                    "ds": ds[j],
                    "y": 100.0 + (sign * (5.0 + j) if hit else 0.1),
                    "y_hat": 100.0,
                    "lower": 98.0,
                    "upper": 102.0,
                    "score": 4.5 + j / 10 if hit else 0.5,
                    "is_anomaly": hit,
                    "cluster": "c0",
                    "status": "ok",
                    "p_value": 1e-6 / (1 + j) if hit else 0.6,
                }
            )
    return pd.DataFrame(rows)


def test_events_merge_consecutive_grid_points_only():
    df = _frame(flagged={(0, 2), (0, 3), (0, 4), (0, 7), (1, 4), (2, 11)}, y_sign={(0, 3)})
    a = apply_alerts(df, AlertRules(), threshold=4.0)
    ev = a.events
    assert list(ev.columns) == list(EVENT_COLUMNS)
    assert ev["n_points"].tolist() == [3, 1, 1, 1]
    first = ev.iloc[0]
    assert first["start"] == df["ds"][2] and first["end"] == df["ds"][4] and first["peak_ds"] == df["ds"][4]
    assert first["direction"] == "mixed" and ev.iloc[1]["direction"] == "up"
    np.testing.assert_allclose(first["severity"], -np.log10([1e-6 / 3, 1e-6 / 4, 1e-6 / 5]).sum())
    assert ev["ongoing"].tolist() == [False, False, False, True]  # s2's event reaches its last point
    assert a.counts["flagged"] == 6 and a.counts["events"] == 4


def test_events_cross_midnight_and_break_at_gaps():
    df = _frame(n_series=1, n=12, flagged={(0, 5), (0, 6), (0, 7), (0, 9)})  # 23:00, 00:00, 01:00 | 03:00
    ev = apply_alerts(df, AlertRules()).events
    assert ev["n_points"].tolist() == [3, 1]
    assert ev.iloc[0]["start"].day == 1 and ev.iloc[0]["end"].day == 2
    # a missing row breaks a run: drop 00:00 and the run splits
    ev2 = apply_alerts(df.drop(index=6), AlertRules()).events
    assert ev2["n_points"].tolist() == [1, 1, 1]
    # the series' own grid step (daily) given by the caller: hourly points are not consecutive
    step = np.full(len(df), np.timedelta64(1, "D"))
    assert apply_alerts(df, AlertRules(), step=step).events["n_points"].tolist() == [1, 1, 1, 1]


@settings(max_examples=25, deadline=None)
@given(
    st.sets(st.tuples(st.integers(0, 2), st.integers(0, 11)), max_size=20),
    st.sampled_from(["both", "up", "down"]),
    st.integers(1, 4),
    st.floats(0, 20),
    st.floats(0, 0.2),
    st.integers(0, 10),
    st.sampled_from([0.0, 1e-7, 1e-3]),
)
def test_rules_only_remove_flags_and_say_why(flagged, direction, min_consecutive, min_abs, min_rel, budget, fdr):
    df = _frame(flagged=flagged, y_sign={f for f in flagged if f[1] % 3 == 0})
    rules = AlertRules(
        fdr=fdr,
        direction=direction,
        min_consecutive=min_consecutive,
        min_abs_deviation=min_abs,
        min_rel_deviation=min_rel,
        max_alerts=budget,
    )
    a = apply_alerts(df, rules)
    before, after = df["is_anomaly"].to_numpy(), a.scores["is_anomaly"].to_numpy()
    assert not (after & ~before).any()
    removed = before & ~after
    assert a.scores["suppressed"].notna().to_numpy().tolist() == removed.tolist()
    if budget:
        assert after.sum() <= budget
    dev = (a.scores["y"] - a.scores["y_hat"]).to_numpy()
    assert (np.abs(dev[after]) >= min_abs).all() and (np.abs(dev[after]) / 100.0 >= min_rel).all()
    if direction == "up":
        assert (dev[after] > 0).all()
    if direction == "down":
        assert (dev[after] < 0).all()
    assert a.events["n_points"].sum() == after.sum()
    if len(a.events):
        assert (a.events["n_points"] >= min_consecutive).all()
    assert df["is_anomaly"].to_numpy().tolist() == before.tolist()  # the input is not changed


def test_each_rule_by_hand():
    df = _frame(flagged={(0, 2), (0, 3), (1, 4), (2, 8)}, y_sign={(1, 4)})
    # deviations: s0 p2 +7, s0 p3 +8, s1 p4 -9, s2 p8 +13
    sup = lambda rules: apply_alerts(df, rules).scores.set_index(["unique_id", "ds"])["suppressed"]  # noqa: E731
    key = lambda s, j: (f"s{s}", df["ds"][j])  # noqa: E731
    assert sup(AlertRules(direction="up"))[key(1, 4)] == "direction"
    assert sup(AlertRules(direction="down"))[key(0, 2)] == "direction"
    r = sup(AlertRules(min_abs_deviation=8.5))
    assert r[key(0, 2)] == r[key(0, 3)] == "min_abs_deviation" and pd.isna(r[key(1, 4)])
    r = sup(AlertRules(min_rel_deviation=0.1))  # 10% of y_hat = 100: only the +13
    assert pd.isna(r[key(2, 8)]) and r[key(1, 4)] == "min_rel_deviation"
    r = sup(AlertRules(min_consecutive=2))
    assert pd.isna(r[key(0, 2)]) and pd.isna(r[key(0, 3)]) and r[key(1, 4)] == r[key(2, 8)] == "min_consecutive"
    r = sup(AlertRules(max_alerts=2))  # p = 1e-6 / (1 + position): positions 8 and 4 are the most significant
    kept = [k for k, v in r.items() if pd.isna(v) and df.set_index(["unique_id", "ds"])["is_anomaly"][k]]
    assert sorted(kept) == sorted([key(2, 8), key(1, 4)])


def test_fdr_rule_and_columns():
    df = _frame(flagged={(0, 1), (1, 1)})
    df.loc[df["is_anomaly"] & (df["unique_id"] == "s1"), "p_value"] = 1e-3  # 36 points: q = 0.018
    a = apply_alerts(df, AlertRules(fdr=0.01))
    cols = list(a.scores.columns)
    assert cols[: len(SCORE_COLUMNS)] == list(SCORE_COLUMNS) and cols[len(SCORE_COLUMNS) :] == list(ALERT_COLUMNS)
    assert a.scores["is_anomaly"].sum() == 1 and a.counts["suppressed"] == {"fdr": 1}
    np.testing.assert_allclose(a.scores["q_value"].max(), 0.6)  # the largest p keeps its value (rank m)


def test_not_ok_points_get_no_q_value():
    df = _frame()
    df.loc[0, ["status", "p_value"]] = ["insufficient_history", np.nan]
    q = apply_alerts(df, AlertRules()).scores["q_value"]
    assert np.isnan(q[0]) and np.isfinite(q[1:]).all()


def test_bad_rules_are_config_errors():
    with pytest.raises(ConfigError, match="direction"):
        Config.load(None, {"direction": "sideways"})
    with pytest.raises(ConfigError, match="fdr"):
        Config.load(None, {"fdr": 2.0})
    with pytest.raises(ConfigError, match="min_consecutive"):
        Config.load(None, {"min_consecutive": 0})


def test_no_flags_gives_an_empty_typed_events_frame():
    ev = build_events(_frame().assign(q_value=0.5))
    assert len(ev) == 0 and list(ev.columns) == list(EVENT_COLUMNS)


# -- calibration and BH on generated data (the benchmark, small) --------------------------------


def test_benchmark_small(tiny_cluster):
    """Clean data: flag rate at p <= 1% within 1.5x of nominal; injected: BH's FDP stays small."""
    from maml_anomaly.benchmarks.alerts import run
    from maml_anomaly.core.scoring import p_to_score

    out = run(n_series=1500, cluster=tiny_cluster, threshold=float(p_to_score(np.array(0.01))), chunk=1500)
    c, i = out["clean"], out["injected"]
    assert c["points"] == 1500 * 24
    assert 1 / 1.5 <= c["ratio"] <= 1.5, c
    assert c["bh_flags_at_fdr"] <= 3  # all points are clean: BH should find (almost) nothing
    # one-step forecasts catch a level shift's first point only: recall is modest by construction
    assert i["bh"]["recall"] > 0.05 and i["bh_without_echo"]["fdp"] <= 0.05, i


# -- the pipeline hook ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """30 hourly series, a spike in s05 and a dip across midnight in s07, a tiny meta-trained model."""
    from synth import seasonal_panel

    from maml_anomaly.commands.meta_train import meta_train
    from maml_anomaly.store import ModelDir

    tmp = tmp_path_factory.mktemp("alerts")
    m = seasonal_panel(30, 24 * 21, seed=3)
    m[5, 24 * 20 + 5] += 50 * m[5].std()
    m[7, 24 * 19 + 23 : 24 * 20 + 2] -= 30 * m[7].std()
    ds = pd.date_range("2024-01-01", periods=m.shape[1], freq="h")
    ids = [f"s{i:02d}" for i in range(30)]
    df = pd.DataFrame({"unique_id": np.repeat(ids, m.shape[1]), "ds": np.tile(ds, 30), "y": m.ravel()})
    df.to_parquet(tmp / "data.parquet")
    cfg = Config.load(None, {"iterations": 40, "time_budget_s": 30.0, "hidden": (16, 16), "inner_steps": 3})
    md = ModelDir(tmp / "model")
    md.prepare(False)
    md.write_manifest(cfg, cfg.columns, {"rows": len(df)})
    md.save_clusters(pd.DataFrame({"unique_id": ids, "cluster": "c0", "period": 24}))
    meta_train(config=cfg, input=tmp / "data.parquet", model_dir=tmp / "model", overwrite=True)
    return tmp


def _cli(args):
    from maml_anomaly.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], prog_name="maml-anomaly")


def test_backtest_writes_events_across_midnight(trained):
    out, ev = trained / "scores.parquet", trained / "events.parquet"
    r = _cli(
        [
            "backtest",
            "-i",
            trained / "data.parquet",
            "-m",
            trained / "model",
            "-o",
            out,
            "--events",
            ev,
            "--start",
            "2024-01-20",
            "-q",
        ]
    )
    assert r.exit_code == 0, r.output
    scores, events = pd.read_parquet(out), pd.read_parquet(ev)
    assert list(scores.columns[: len(SCORE_COLUMNS) + 3]) == [*SCORE_COLUMNS, *ALERT_COLUMNS]
    ok = scores["status"] == "ok"
    assert (scores.loc[ok, "q_value"] >= scores.loc[ok, "p_value"] - 1e-15).all()
    dip = events[
        (events["unique_id"] == "s07")
        & (events["start"] <= pd.Timestamp("2024-01-21 00:00"))
        & (events["end"] >= pd.Timestamp("2024-01-21 00:00"))
    ]
    assert len(dip) == 1 and dip.iloc[0]["start"].day == 20 and dip.iloc[0]["end"].day == 21
    assert dip.iloc[0]["direction"] in ("down", "mixed")  # the recovery point may be flagged too
    assert dip.iloc[0]["peak_y"] < dip.iloc[0]["peak_y_hat"]
    assert (events["unique_id"] == "s05").any()
    assert "events" in r.stdout and "top" in r.stdout and "s07" in r.stdout


def test_daily_score_direction_up_drops_the_dip(trained):
    out, ev = trained / "up.parquet", trained / "up_events.parquet"
    r = _cli(
        [
            "daily-score",
            "-i",
            trained / "data.parquet",
            "-m",
            trained / "model",
            "-o",
            out,
            "--events",
            ev,
            "--date",
            "2024-01-21",
            "--direction",
            "up",
            "-q",
            "--json",
        ]
    )
    assert r.exit_code == 0, r.output
    scores, events = pd.read_parquet(out), pd.read_parquet(ev)
    dip = scores[(scores["unique_id"] == "s07") & (scores["ds"] <= pd.Timestamp("2024-01-21 01:00"))]
    assert not dip["is_anomaly"].any() and (dip["suppressed"] == "direction").any()
    assert (events["direction"] != "down").all()
    import json

    summary = json.loads(r.stdout)
    assert summary["alerts"]["suppressed"]["direction"] >= 1 and summary["alerts"]["events"] == len(events)


def test_events_path_must_differ_from_output(trained):
    out = trained / "same.parquet"
    r = _cli(["daily-score", "-i", trained / "data.parquet", "-m", trained / "model", "-o", out, "--events", out])
    assert r.exit_code == 1 and "same file" in r.output and not out.exists()
