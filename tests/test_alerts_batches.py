"""The run's alerts from batches of whole series and small summaries equal apply_alerts on the whole run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from maml_anomaly.core.alerts import (
    AlertRules,
    alert_batch,
    apply_alerts,
    bh_qvalues,
    bh_summary,
    budget_candidates,
    budget_keeps,
    merge_alerts,
    q_curves,
)


def _run(n_series: int = 60, n_days: int = 8, seed: int = 0) -> pd.DataFrame:
    """Scores of a backtest sorted by (unique_id, ds): ties in p and score, runs of flags, not-ok rows."""
    rng = np.random.default_rng(seed)
    ids = np.repeat([f"s{i:03d}" for i in range(n_series)], n_days)
    ds = np.tile(pd.date_range("2024-03-01", periods=n_days, freq="D").to_numpy(), n_series)
    n = ids.size
    p = np.round(rng.random(n) ** 4, 3)  # rounded: many ties
    score = np.round(-np.log10(np.maximum(p, 1e-9)), 1)
    status = np.where(rng.random(n) < 0.05, "insufficient_history", "ok").astype(object)
    y_hat = rng.normal(100, 5, n)
    return pd.DataFrame(
        {
            "unique_id": ids.astype(object),
            "ds": ds,
            "y": y_hat + rng.normal(0, 3, n) * 4,
            "y_hat": y_hat,
            "lower": y_hat - 5,
            "upper": y_hat + 5,
            "score": np.where(status == "ok", score, np.nan),
            "is_anomaly": (score >= 1.0) & (status == "ok"),
            "cluster": np.where(np.arange(n) % 3 == 0, "daily_7_0", "daily_7_1").astype(object),
            "status": status,
            "p_value": np.where(status == "ok", p, np.nan),
        }
    )


def _split(frame: pd.DataFrame, cuts: list[int]) -> list[pd.DataFrame]:
    """Batches of whole series: cut before the series numbered in ``cuts``."""
    series = pd.factorize(frame["unique_id"])[0]
    bounds = np.searchsorted(series, [0, *cuts, series.max() + 1])
    return [frame.iloc[a:b].reset_index(drop=True) for a, b in zip(bounds[:-1], bounds[1:])]


def _alerts_by_batch(batches: list[pd.DataFrame], rules: AlertRules):
    curves = q_curves([bh_summary(b, rules) for b in batches])
    keeps = [None] * len(batches)
    if rules.max_alerts > 0:
        keeps = budget_keeps([budget_candidates(b, rules, curves) for b in batches], rules.max_alerts)
    done = [alert_batch(b, rules, curves, keep=k) for b, k in zip(batches, keeps)]
    merged = merge_alerts([(a.counts, a.events) for a in done], 3.0, object)
    return pd.concat([a.scores for a in done], ignore_index=True), merged


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """``suppressed`` as plain objects (pandas may infer a string dtype when concatenating)."""
    col = frame["suppressed"].astype(object)
    return frame.assign(suppressed=col.where(col.notna(), None))


RULES = [
    AlertRules(),
    AlertRules(fdr=0.05),
    AlertRules(fdr=0.2, q_per_cluster=True),
    AlertRules(max_alerts=25),
    AlertRules(fdr=0.3, max_alerts=40, min_consecutive=2),
    AlertRules(max_alerts=7, direction="up", min_abs_deviation=1.0),
]


@pytest.mark.parametrize("rules", RULES, ids=[str(i) for i in range(len(RULES))])
@pytest.mark.parametrize("cuts", [[], [7], [1, 20, 21, 40]], ids=["one", "two", "five"])
def test_batches_give_the_whole_runs_alerts_to_the_bit(rules, cuts):
    frame = _run()
    want = apply_alerts(frame, rules, threshold=3.0)
    got_scores, got = _alerts_by_batch(_split(frame, cuts), rules)
    pd.testing.assert_frame_equal(_plain(got_scores), _plain(want.scores), check_exact=True)
    pd.testing.assert_frame_equal(got.events, want.events, check_exact=True)
    assert got.counts == want.counts
    if rules.max_alerts:
        assert got.counts["flagged"] <= rules.max_alerts


def test_q_curves_are_small_and_exact_on_many_tests():
    rng = np.random.default_rng(3)
    p = np.r_[rng.random(200_000), rng.random(300) * 1e-7]
    rules = AlertRules()
    frame = pd.DataFrame({"status": "ok", "p_value": p, "cluster": "c"})
    curves = q_curves([bh_summary(frame.iloc[:1000], rules), bh_summary(frame.iloc[1000:], rules)])
    from maml_anomaly.core.alerts import q_from_curves

    np.testing.assert_array_equal(q_from_curves(frame, rules, curves), bh_qvalues(p))
    assert curves[""].p.size < p.size // 20  # what goes back to the batches is a few steps, not the tests
