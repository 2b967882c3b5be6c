"""A small scored run for the report's tests (test helper, not product code): every frame render_report takes."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm

from maml_anomaly.core.alerts import AlertRules, apply_alerts
from maml_anomaly.core.incidents import find_incidents

EVIL_ID = "<script>alert(1)</script>"  # series ids are user input
EVIL_CLUSTER = 'c&"<b>'


def scored_run(n_series: int = 24, days: int = 4, seed: int = 0) -> dict:
    """Hourly daily-cycle series, the last day scored (y_hat = the clean cycle, band +-3 sd), with an
    outage at 03:00 in half the series of cluster 1h-p24 (an incident) and a spike in the series
    named EVIL_ID (cluster EVIL_CLUSTER)."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"s{i:02d}" for i in range(n_series - 1)] + [EVIL_ID], dtype=object)
    cluster = np.where(np.arange(n_series) % 3 == 2, EVIL_CLUSTER, "1h-p24").astype(object)
    ds = pd.date_range("2024-03-21", periods=24 * days, freq="h")
    level = rng.uniform(10, 1000, (n_series, 1))
    clean = level * (1 + 0.3 * np.sin(2 * np.pi * np.arange(ds.size) / 24))
    sd = 0.02 * level
    y = clean + sd * rng.standard_normal(clean.shape)
    last = slice(24 * (days - 1), None)
    hit = (np.arange(n_series) % 2 == 0) & (cluster == "1h-p24")
    y[np.ix_(hit, np.arange(24 * (days - 1) + 3, 24 * (days - 1) + 6))] = 0.0  # outage 03:00..05:00
    y[-1, 24 * (days - 1) + 15] += 12 * sd[-1, 0]  # a spike
    z = (y[:, last] - clean[:, last]) / sd
    p = 2 * norm.sf(np.abs(z))
    n_day = 24
    scores = pd.DataFrame(
        {
            "unique_id": np.repeat(ids, n_day),
            "ds": np.tile(ds[last], n_series),
            "y": y[:, last].ravel(),
            "y_hat": clean[:, last].ravel(),
            "lower": (clean[:, last] - 3 * sd).ravel(),
            "upper": (clean[:, last] + 3 * sd).ravel(),
            "score": np.abs(z).ravel(),
            "is_anomaly": (np.abs(z) >= 3).ravel(),
            "cluster": np.repeat(cluster, n_day),
            "status": "ok",
            "p_value": p.ravel(),
        }
    )
    alerted = apply_alerts(scores, AlertRules(), threshold=3.0)
    history = pd.DataFrame({"unique_id": np.repeat(ids, ds.size), "ds": np.tile(ds, n_series), "y": y.ravel()})
    sizes = pd.Series(cluster).value_counts().to_dict()
    incidents = find_incidents(alerted.events, pd.Timedelta(hours=1), cluster_sizes=sizes).incidents
    summary = {
        "points": len(scores),
        "series": n_series,
        "anomalies": int(alerted.scores["is_anomaly"].sum()),
        "statuses": {"ok": len(scores)},
        "alerts": alerted.counts,
        "threshold": 3.0,
        "first_day": str(ds[last][0].date()),
        "last_day": str(ds[-1].date()),
    }
    return {
        "summary": summary,
        "scores": alerted.scores,
        "history": history,
        "events": alerted.events,
        "incidents": incidents,
    }
