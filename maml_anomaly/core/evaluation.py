"""Detection and forecast metrics of a scores table against labelled anomalies.

Labels are windows (unique_id, start, end; both ends inclusive, like NAB's) or points
(unique_id, ds; each point is a one-point window). Overlapping windows of a series are merged.

Only rows with status `ok` are points. A window is evaluated when the scores have at least one
row inside it (any status); windows entirely outside the scored range are counted apart.

* event recall: evaluated windows with at least one flagged point inside / evaluated windows;
* point precision: flagged points inside windows / flagged points;
* F1: harmonic mean of event recall and point precision;
* false-alarm rate (FAR): flagged points outside windows / points outside windows ("clean");
* recall at a fixed FAR: the one score threshold, common to all series, that flags at most
  `far` of the clean points (score strictly above it), then event recall and precision there;
* forecast error on clean points: MASE of y_hat (in-sample scale: the mean absolute seasonal
  difference of the history, when given) and the ratio of MAE to seasonal naive's on the same
  points (geometric mean over series).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from maml_anomaly.errors import InputError


def as_windows(labels: pd.DataFrame) -> pd.DataFrame:
    """Labels as windows (unique_id, start, end, kind), overlapping windows of a series merged."""
    if {"unique_id", "start", "end"} <= set(labels.columns):
        w = labels.copy()
    elif {"unique_id", "ds"} <= set(labels.columns):
        w = labels.rename(columns={"ds": "start"}).assign(end=lambda d: d["start"])
    else:
        raise InputError(
            "labels need columns unique_id, start, end (windows) or unique_id, ds "
            f"(points); found {', '.join(map(str, labels.columns))}"
        )
    if "kind" not in w.columns:
        w["kind"] = ""
    w = w[["unique_id", "start", "end", "kind"]].copy()
    for c in ("start", "end"):
        w[c] = pd.to_datetime(w[c]).astype("datetime64[ns]")
    w = w.sort_values(["unique_id", "start", "end"], ignore_index=True)
    same = w["unique_id"].eq(w["unique_id"].shift())
    reach = w.groupby("unique_id", sort=False)["end"].cummax().shift()  # latest end so far
    new = ~same | (w["start"] > reach)
    group = new.cumsum()
    return (
        w.groupby(group, sort=False)
        .agg(unique_id=("unique_id", "first"), start=("start", "first"), end=("end", "max"), kind=("kind", "first"))
        .reset_index(drop=True)
    )


def window_of(ids: pd.Series, ds: pd.Series, windows: pd.DataFrame) -> np.ndarray:
    """(R,) index of the window holding each (id, ds), -1 outside every window."""
    if len(windows) == 0 or len(ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    left = pd.DataFrame(
        {"unique_id": _key(ids), "ds": pd.to_datetime(ds).astype("datetime64[ns]").values, "_row": np.arange(len(ids))}
    )
    right = windows.assign(
        unique_id=pd.Series(_key(windows["unique_id"]), index=windows.index, dtype=object), _win=np.arange(len(windows))
    )
    left["unique_id"] = left["unique_id"].astype(object)
    m = pd.merge_asof(
        left.sort_values("ds", kind="stable"),
        right.sort_values("start", kind="stable"),
        left_on="ds",
        right_on="start",
        by="unique_id",
        direction="backward",
    )
    inside = (m["end"] >= m["ds"]).to_numpy()
    out = np.full(len(ids), -1, dtype=np.int64)
    out[m["_row"].to_numpy()] = np.where(inside, m["_win"].fillna(-1).to_numpy(), -1).astype(np.int64)
    return out


def _key(ids: pd.Series) -> np.ndarray:
    """Series ids as strings, so int ids in scores match str ids in labels and vice versa."""
    return pd.Series(ids).astype(str).to_numpy(dtype=object)


def _safe_div(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def detection_counts(window: np.ndarray, ok: np.ndarray, flag: np.ndarray, n_windows: int, covered: np.ndarray) -> dict:
    """Metrics from per-row window index (R,), ok mask (R,), flag mask (R,) and covered windows."""
    flag = flag & ok
    inside = window >= 0
    found = np.zeros(n_windows, dtype=bool)
    found[window[flag & inside]] = True
    n_eval = int(covered.sum())
    recall = _safe_div((found & covered).sum(), n_eval)
    precision = _safe_div((flag & inside).sum(), flag.sum())
    n_clean = int((ok & ~inside).sum())
    f1 = (
        2 * precision * recall / (precision + recall)
        if np.isfinite(precision) and np.isfinite(recall) and precision + recall > 0
        else 0.0
    )
    return {
        "event_recall": recall,
        "point_precision": precision,
        "f1": f1,
        "false_alarm_rate": _safe_div((flag & ~inside).sum(), n_clean),
        "n_flags": int(flag.sum()),
        "n_windows_found": int((found & covered).sum()),
    }


def threshold_at_far(clean_scores: np.ndarray, far: float) -> float:
    """Smallest threshold such that at most floor(far * n) clean scores lie strictly above it."""
    s = np.sort(np.asarray(clean_scores, dtype=float)[np.isfinite(clean_scores)])[::-1]
    k = int(np.floor(far * len(s)))
    return float(s[k]) if k < len(s) else float("-inf")


def evaluate_scores(
    scores: pd.DataFrame, labels: pd.DataFrame, *, far: float = 0.01, naive: pd.DataFrame | None = None
) -> dict:
    """Summary dict of detection metrics (default threshold and at a fixed FAR) and forecast error.

    scores: the scores schema (unique_id, ds, y, y_hat, score, is_anomaly, status, ...).
    naive: optional (unique_id, ds, y_naive[, scale]) seasonal-naive forecasts of the same points
    and each series' in-sample MASE scale; without it forecast metrics are left out.
    """
    missing = {"unique_id", "ds", "score", "is_anomaly", "status"} - set(scores.columns)
    if missing:
        raise InputError(f"scores lack columns {sorted(missing)}; expected the output of daily-score or backtest")
    windows = as_windows(labels)
    win = window_of(scores["unique_id"], scores["ds"], windows)  # (R,)
    ok = (scores["status"].to_numpy() == "ok") & np.isfinite(scores["score"].to_numpy(float))
    score = scores["score"].to_numpy(float)
    covered = np.zeros(len(windows), dtype=bool)
    covered[win[win >= 0]] = True
    flag = scores["is_anomaly"].fillna(False).to_numpy(bool)
    default = detection_counts(win, ok, flag, len(windows), covered)
    tau = threshold_at_far(score[ok & (win < 0)], far)
    at_far = detection_counts(win, ok, ok & (score > tau), len(windows), covered)
    out = {
        "n_series": int(scores["unique_id"].nunique()),
        "n_rows": len(scores),
        "n_points": int(ok.sum()),
        "n_clean_points": int((ok & (win < 0)).sum()),
        "n_windows": int(covered.sum()),
        "n_windows_outside_scores": int((~covered).sum()),
        "default": default,
        "at_far": {"target_far": far, "threshold": tau if np.isfinite(tau) else None, **at_far},
        "recall_by_kind": _recall_by_kind(windows, win, {"default": ok & flag, "at_far": ok & (score > tau)}, covered),
        "status_counts": {str(k): int(v) for k, v in scores["status"].value_counts().sort_index().items()},
    }
    if naive is not None:
        out["forecast"] = forecast_accuracy(scores, naive, clean=ok & (win < 0))
    return out


def _recall_by_kind(windows: pd.DataFrame, win: np.ndarray, flags: dict, covered: np.ndarray) -> dict:
    """{kind: {n, recall_<name>}} for each flag set in flags ({name: (R,) bool})."""
    kinds = windows["kind"].astype(str).to_numpy()
    out = {k: {"n": int((covered & (kinds == k)).sum())} for k in sorted(set(kinds[covered])) if k}
    for name, flag in flags.items():
        found = np.zeros(len(windows), dtype=bool)
        found[win[flag & (win >= 0)]] = True
        for k in out:
            sel = covered & (kinds == k)
            out[k][f"recall_{name}"] = _safe_div((found & sel).sum(), sel.sum())
    return out


WORSE_THAN_REFERENCES = 1.2  # a series' MAE above this multiple of the better simple reference's


def forecast_accuracy(scores: pd.DataFrame, naive: pd.DataFrame, *, clean: np.ndarray) -> dict:
    """MASE of y_hat and of seasonal naive, and the MAE ratio, over clean points with both forecasts.

    With a ``y_last`` column also ``share_worse_than_references``: the share of series whose MAE
    is more than 1.2 x that of the better simple reference (last value or seasonal naive)."""
    key = pd.DataFrame(
        {"unique_id": _key(scores["unique_id"]), "ds": pd.to_datetime(scores["ds"]).astype("datetime64[ns]").values}
    )
    nv = naive.assign(unique_id=_key(naive["unique_id"]))
    nv["ds"] = pd.to_datetime(nv["ds"]).astype("datetime64[ns]")
    cols = ["unique_id", "ds", "y_naive"] + [c for c in ("y_last", "scale") if c in nv.columns]
    m = key.merge(nv[cols], on=["unique_id", "ds"], how="left")
    y = scores["y"].to_numpy(float)
    err = np.abs(y - scores["y_hat"].to_numpy(float))
    err_naive = np.abs(y - m["y_naive"].to_numpy(float))
    use = clean & np.isfinite(err) & np.isfinite(err_naive)
    g = pd.DataFrame({"id": key["unique_id"].to_numpy()[use], "e": err[use], "n": err_naive[use]})
    if "scale" in m.columns:
        g["scale"] = m["scale"].to_numpy(float)[use]
    if "y_last" in m.columns:  # NaN where the step before is missing: the mean skips it
        g["last"] = np.abs(y - m["y_last"].to_numpy(float))[use]
    per = g.groupby("id").mean()
    ratio = per["e"] / per["n"]
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    out = {
        "n_points": int(use.sum()),
        "n_series": int(len(per)),
        "mae_ratio_gmean": float(np.exp(np.log(ratio).mean())) if len(ratio) else float("nan"),
        "mae_ratio_pooled": _safe_div(g["e"].sum(), g["n"].sum()),
    }
    if "last" in per.columns:  # (plus rounding: a noise-free series' exact forecasts differ by 1e-16)
        better = np.minimum(per["n"], per["last"]) + 1e-12 * g.assign(a=np.abs(y[use])).groupby("id")["a"].mean()
        out["share_worse_than_references"] = (
            float((per["e"] > WORSE_THAN_REFERENCES * better).mean()) if len(per) else float("nan")
        )
    if "scale" in per.columns:
        s = per[np.isfinite(per["scale"]) & (per["scale"] > 0)]
        out["mase"] = float((s["e"] / s["scale"]).mean()) if len(s) else float("nan")
        out["mase_naive"] = float((s["n"] / s["scale"]).mean()) if len(s) else float("nan")
    return out


def format_summary(summary: dict, name: str = "") -> str:
    """A short plain-text table of one summary."""
    d, f = summary["default"], summary["at_far"]
    lines = [
        f"{name or 'scores'}: {summary['n_series']} series, {summary['n_points']} scored points, "
        f"{summary['n_windows']} labelled windows in range",
        f"  at the default threshold: event recall {d['event_recall']:.3f}, point precision "
        f"{d['point_precision']:.3f}, F1 {d['f1']:.3f}, FAR {d['false_alarm_rate']:.4f} "
        f"({d['n_flags']} flags)",
        f"  at FAR {f['target_far']:.2%} (threshold {_num(f['threshold'])}): event recall "
        f"{f['event_recall']:.3f}, point precision {f['point_precision']:.3f}, F1 {f['f1']:.3f}",
    ]
    if "forecast" in summary:
        fc = summary["forecast"]
        lines.append(
            f"  forecast on clean points: MAE ratio to seasonal naive {fc['mae_ratio_gmean']:.3f}"
            + (f", MASE {fc['mase']:.3f} (seasonal naive {fc['mase_naive']:.3f})" if "mase" in fc else "")
        )
    return "\n".join(lines)


def _num(v) -> str:
    return "none" if v is None else f"{v:.3g}"
