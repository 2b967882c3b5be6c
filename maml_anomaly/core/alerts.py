"""From flags to alerts: q-values across the run, post-rules, an alert budget and events.

Scoring (``scoring.py``) gives every scored point a calibrated two-sided tail probability
``p_value`` (the cluster's calibration of held-out adapted residuals) and flags the points whose
score is at or above the threshold. This module only ever *removes* flags, in this order:

1. ``fdr``: keep a flag only when its Benjamini-Hochberg ``q_value`` (over the run's scored
   points, or per cluster) is at most ``fdr``;
2. post-rules: ``min_abs_deviation`` (``|y - y_hat|``), ``min_rel_deviation``
   (``|y - y_hat| / |y_hat|``), ``direction`` (up: ``y > y_hat``; down: ``y < y_hat``) and
   ``min_consecutive`` (runs of consecutive flagged grid points shorter than this are dropped);
3. ``max_alerts``: keep the N most significant flags (smallest p-value) of the run.

Then consecutive flagged points of a series on its grid become one event (:mod:`maml_anomaly.core.events`). Every step is
vectorised: one sort of the run's points by (series, ds), run boundaries by comparison with the
previous point, segment reductions with ``np.*.reduceat``; no Python loop per series.

The column ``suppressed`` names the rule that removed a flag (null where the point was never
flagged or is still flagged), so a missing alert can always be explained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from maml_anomaly.config import DIRECTIONS, AlertConfig
from maml_anomaly.core.events import Grid, build_events, empty_events, make_grid, runs, top_events
from maml_anomaly.core.scoring import STATUS_OK, score_to_p

#: columns added to the scores frame after the SPEC's leading columns (and scoring's p_value)
ALERT_COLUMNS = ("p_value", "q_value", "suppressed")


#: the rules (the ``[alerts]`` config section; every default keeps all of scoring's flags, 0 = off)
AlertRules = AlertConfig


# -- q-values -------------------------------------------------------------------------------------


def bh_qvalues(p: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), NaN where p is NaN.

    q_i = min over j with p_j >= p_i of (m p_j / rank_j), m = finite p-values (of the group).
    ``groups`` (N,) integer codes: BH within each group separately. One sort by (group, p), then
    a reversed running minimum within each group (pandas' grouped cummin, in C).
    """
    p = np.asarray(p, dtype=np.float64)  # (N,)
    q = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return q
    if groups is None:  # one group: a plain reversed running minimum
        order = np.argsort(p[ok], kind="stable")  # (M,)
        m = order.size
        adj = np.minimum(p[ok][order] * m / np.arange(1, m + 1), 1.0)
        q[ok[order]] = np.clip(np.minimum.accumulate(adj[::-1])[::-1], 0.0, 1.0)
        return q
    g = np.asarray(groups)[ok].astype(np.int64)
    order = np.lexsort((p[ok], g))  # (M,) by group, then p
    gs, ps = g[order], p[ok][order]
    first = np.r_[0, np.flatnonzero(np.diff(gs)) + 1]  # (G,) start of each group
    sizes = np.diff(np.r_[first, gs.size])  # (G,)
    rank = np.arange(gs.size) - np.repeat(first, sizes) + 1  # (M,) 1-based rank within group
    adj = np.minimum(ps * np.repeat(sizes, sizes) / rank, 1.0)  # (M,)
    rev = pd.Series(adj[::-1]).groupby(gs[::-1], sort=False).cummin().to_numpy()[::-1]
    q[ok[order]] = np.clip(rev, 0.0, 1.0)
    return q


# -- rules ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alerts:
    """The scores with q_value / suppressed added and the final flags, and the events."""

    scores: pd.DataFrame | None  # None for a run merged from batches (its rows are in files)
    events: pd.DataFrame
    counts: dict[str, Any]  # what happened, for the summary


def apply_alerts(
    scores: pd.DataFrame,
    rules: AlertRules,
    *,
    step: np.ndarray | None = None,
    series: np.ndarray | None = None,
    threshold: float | None = None,
) -> Alerts:
    """q-values, the rules (each only removes flags), the budget and the events of one run.

    ``scores``: the scores frame (SPEC columns and ``p_value``); ``step`` (N,) timedelta64 per
    row (the series' grid step; inferred from the run when None); ``series`` (N,) optional
    integer series code per row (see :func:`make_grid`). ``threshold`` only feeds the
    summary's expected false alarms. Returns a new frame; the input is not changed.
    """
    out = scores.copy(deep=False)  # new columns only: the caller's frame is not changed
    p = bh_pvalues(out)
    keys = bh_group_keys(out, rules)
    q = bh_qvalues(p, pd.factorize(keys)[0] if keys is not None else None)
    pending = _Pending.start(out, rules, p, q, step, series)
    if rules.max_alerts > 0:
        pending.apply_budget(rules.max_alerts)
    return pending.finish(threshold)


def bh_pvalues(scores: pd.DataFrame) -> np.ndarray:
    """(N,) the p-values Benjamini-Hochberg counts as tests: those of ok points, NaN elsewhere."""
    ok = (scores["status"] == STATUS_OK).to_numpy(bool, na_value=False)
    return np.where(ok, scores["p_value"].to_numpy(np.float64, na_value=np.nan), np.nan)


def bh_group_keys(scores: pd.DataFrame, rules: AlertRules) -> np.ndarray | None:
    """(N,) the Benjamini-Hochberg group of each row (its cluster) with per-cluster q-values; else None."""
    if not rules.q_per_cluster or not len(scores):
        return None
    return scores["cluster"].astype(object).fillna("").to_numpy(object)


class _Pending:
    """A frame's flags while the rules remove them, and why each removed flag went."""

    def __init__(self, out: pd.DataFrame, rules: AlertRules, p: np.ndarray, q: np.ndarray, grid: Grid) -> None:
        self.out, self.rules, self.p, self.q, self.grid = out, rules, p, q, grid
        self.raw = out["is_anomaly"].to_numpy(bool).copy()
        self.flags = self.raw.copy()
        self.suppressed = np.full(len(out), None, dtype=object)

    def drop(self, mask: np.ndarray, name: str) -> None:
        hit = self.flags & mask
        self.suppressed[hit] = name
        self.flags[hit] = False

    @classmethod
    def start(cls, out, rules: AlertRules, p, q, step, series) -> _Pending:
        """The rules before the budget: fdr, deviations, direction, min_consecutive."""
        grid = make_grid(out["unique_id"], out["ds"].to_numpy(), step, series=series)
        pending = cls(out, rules, p, q, grid)
        y = out["y"].to_numpy(np.float64, na_value=np.nan)
        y_hat = out["y_hat"].to_numpy(np.float64, na_value=np.nan)
        dev = y - y_hat  # (N,)
        if rules.fdr > 0:
            pending.drop(~(q <= rules.fdr), "fdr")
        if rules.min_abs_deviation > 0:
            pending.drop(~(np.abs(dev) >= rules.min_abs_deviation), "min_abs_deviation")
        if rules.min_rel_deviation > 0:
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.abs(dev) / np.abs(y_hat)  # |y_hat| = 0: inf (any change from zero passes)
            pending.drop(~(rel >= rules.min_rel_deviation), "min_rel_deviation")
        if rules.direction != "both":
            pending.drop(~(dev > 0) if rules.direction == "up" else ~(dev < 0), "direction")
        if rules.min_consecutive > 1:
            pending.drop(_short_runs(grid, pending.flags, rules.min_consecutive), "min_consecutive")
        return pending

    def score(self) -> np.ndarray:
        return self.out["score"].to_numpy(np.float64, na_value=np.nan)

    def apply_budget(self, keep: int) -> None:
        """Keep the ``keep`` most significant flags of this frame (then drop runs the cut made short)."""
        self.drop(_over_budget(self.flags, self.p, self.score(), keep), "max_alerts")
        if self.rules.min_consecutive > 1:  # runs the budget cut short
            self.drop(_short_runs(self.grid, self.flags, self.rules.min_consecutive), "max_alerts")

    def finish(self, threshold: float | None) -> Alerts:
        out = self.out
        out["is_anomaly"] = self.flags
        out = _with_alert_columns(out, self.q, self.suppressed)
        events = build_events(out, self.grid)
        kinds, n_suppressed = np.unique(self.suppressed[self.raw & ~self.flags].astype(str), return_counts=True)
        scored = int((out["status"] == STATUS_OK).to_numpy(bool, na_value=False).sum())
        counts = {
            "scored": scored,
            "flagged_by_score": int(self.raw.sum()),
            "flagged": int(self.flags.sum()),
            "suppressed": {str(k): int(v) for k, v in zip(kinds, n_suppressed)},
            "events": len(events),
            "ongoing_events": int(events["ongoing"].sum()) if len(events) else 0,
        }
        if threshold is not None:
            counts["expected_false_alarms"] = round(float(scored) * score_to_p(threshold), 2)
        return Alerts(scores=out, events=events, counts=counts)


# -- the same run from batches of whole series: small summaries on the driver -------------------
#
# A run split into batches of whole series gets the alerts apply_alerts gives the whole run:
# 1. each batch returns its tested p-values (:func:`bh_summary`); the driver turns them into
#    each Benjamini-Hochberg group's q-value step function (:func:`q_curves`), a few breakpoints;
# 2. with a budget, each batch returns its ``max_alerts`` best candidates after the other rules
#    (:func:`budget_candidates`) and the driver counts how many of each batch survive
#    (:func:`budget_keeps`);
# 3. each batch applies all that (:func:`alert_batch`), events included (they are per series),
#    and the driver adds up counts and events (:func:`merge_alerts`).


@dataclass(frozen=True)
class QCurve:
    """One Benjamini-Hochberg group's q-value as a step function of the p-value."""

    p: np.ndarray  # (B,) increasing: the p-values where q steps up
    q: np.ndarray  # (B,) the q-value from there on


def bh_summary(scores: pd.DataFrame, rules: AlertRules) -> dict[str, np.ndarray]:
    """A batch's Benjamini-Hochberg summary: per group ("" = the run) its tests' sorted p-values."""
    p = bh_pvalues(scores)
    keys = bh_group_keys(scores, rules)
    finite = np.isfinite(p)
    if keys is None:
        return {"": np.sort(p[finite])}
    codes, names = pd.factorize(keys[finite])
    return {str(name): np.sort(p[finite][codes == i]) for i, name in enumerate(names)}


def q_curves(batches: list[dict[str, np.ndarray]]) -> dict[str, QCurve]:
    """Each group's q-value step function from the batches' :func:`bh_summary`.

    The same arithmetic as :func:`bh_qvalues` on the whole run (so the same bits): q of the
    k-th smallest p is the smallest min(m p_j / j, 1) over j >= k. Tied p-values share one q,
    so the steps fall on distinct p-values and q(p) is the value at the last step <= p.
    """
    groups: dict[str, list[np.ndarray]] = {}
    for tests in batches:
        for key, values in tests.items():
            groups.setdefault(key, []).append(values)
    curves = {}
    for key, parts in groups.items():
        ps = np.sort(np.concatenate(parts))  # (M,)
        m = ps.size
        adj = np.minimum(ps * m / np.arange(1, m + 1), 1.0)
        q = np.clip(np.minimum.accumulate(adj[::-1])[::-1], 0.0, 1.0)
        step = np.r_[True, q[1:] != q[:-1]] if m else np.zeros(0, bool)
        curves[key] = QCurve(ps[step], q[step])
    return curves


def q_from_curves(scores: pd.DataFrame, rules: AlertRules, curves: dict[str, QCurve]) -> np.ndarray:
    """(N,) q-values of a batch's rows from the run's :func:`q_curves` (NaN where not tested)."""
    p = bh_pvalues(scores)
    keys = bh_group_keys(scores, rules)
    q = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    codes, names = pd.factorize(keys) if keys is not None else (np.zeros(p.size, np.int64), [""])
    for i, name in enumerate(names):
        rows = np.flatnonzero(finite & (codes == i))
        curve = curves.get(str(name))
        if rows.size and curve is not None and curve.p.size:
            at = np.maximum(np.searchsorted(curve.p, p[rows], side="right") - 1, 0)
            q[rows] = curve.q[at]
    return q


def budget_candidates(
    scores: pd.DataFrame, rules: AlertRules, curves: dict[str, QCurve], *, step: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch's ``max_alerts`` most significant flags after the other rules: (p, score, row), best first."""
    q = q_from_curves(scores, rules, curves)
    pending = _Pending.start(scores.copy(deep=False), rules, bh_pvalues(scores), q, step, None)
    idx = np.flatnonzero(pending.flags)
    rank = _significance_order(idx, pending.p[idx], pending.score()[idx])[: rules.max_alerts]
    return pending.p[idx[rank]], pending.score()[idx[rank]], idx[rank]


def budget_keeps(candidates: list[tuple[np.ndarray, np.ndarray, np.ndarray]], budget: int) -> list[int]:
    """How many of each batch's candidates are among the run's ``budget`` most significant.

    ``candidates`` in output order: a row's place in the run is (its batch, its row), the
    tie-break apply_alerts uses on the whole run.
    """
    sizes = [len(c[0]) for c in candidates]
    batch = np.repeat(np.arange(len(candidates), dtype=np.int64), sizes)  # (C,) the candidate's batch
    p, score, row = (np.concatenate([c[k] for c in candidates]) if candidates else np.zeros(0) for k in range(3))
    order = np.lexsort((row, batch, -np.nan_to_num(score, nan=-np.inf), np.nan_to_num(p, nan=np.inf)))
    return np.bincount(batch[order[:budget]], minlength=len(candidates)).tolist()


def alert_batch(
    scores: pd.DataFrame,
    rules: AlertRules,
    curves: dict[str, QCurve],
    *,
    keep: int | None = None,
    step: np.ndarray | None = None,
) -> Alerts:
    """apply_alerts for one batch of whole series of a run, given the run's q-value curves and,
    with a budget, how many of the batch's flags it keeps (:func:`budget_keeps`)."""
    out = scores.copy(deep=False)
    pending = _Pending.start(out, rules, bh_pvalues(out), q_from_curves(out, rules, curves), step, None)
    if rules.max_alerts > 0:
        pending.apply_budget(rules.max_alerts if keep is None else keep)
    return pending.finish(None)


def merge_alerts(batches: list[tuple[dict[str, Any], pd.DataFrame]], threshold: float | None, id_dtype: Any) -> Alerts:
    """The run's counts and events from its batches' (counts, events); no score rows (``scores`` None)."""
    counts: dict[str, Any] = {"scored": 0, "flagged_by_score": 0, "flagged": 0, "suppressed": {}}
    for part, _ in batches:
        for key in ("scored", "flagged_by_score", "flagged"):
            counts[key] += part[key]
        for kind, n in part["suppressed"].items():
            counts["suppressed"][kind] = counts["suppressed"].get(kind, 0) + n
    counts["suppressed"] = dict(sorted(counts["suppressed"].items()))
    found = [ev for _, ev in batches if len(ev)]
    events = (
        pd.concat(found, ignore_index=True).sort_values(["unique_id", "start"], kind="stable", ignore_index=True)
        if found
        else empty_events(id_dtype)
    )
    counts["events"] = len(events)
    counts["ongoing_events"] = int(events["ongoing"].sum()) if len(events) else 0
    if threshold is not None:
        counts["expected_false_alarms"] = round(float(counts["scored"]) * score_to_p(threshold), 2)
    return Alerts(scores=None, events=events, counts=counts)


def _short_runs(grid: Grid, flags: np.ndarray, min_len: int) -> np.ndarray:
    """(N,) bool: flagged rows in runs of fewer than ``min_len`` consecutive grid points."""
    idx, run = runs(grid, flags[grid.order])
    length = np.bincount(run)[run] if run.size else run  # (F,)
    short = np.zeros(flags.size, bool)
    short[grid.order[idx[length < min_len]]] = True
    return short


def _over_budget(flags: np.ndarray, p: np.ndarray, score: np.ndarray, budget: int) -> np.ndarray:
    """(N,) bool: flagged rows beyond the ``budget`` most significant (p, then score, then row)."""
    idx = np.flatnonzero(flags)
    if idx.size <= budget:
        return np.zeros(flags.size, bool)
    rank = _significance_order(idx, p[idx], score[idx])
    over = np.zeros(flags.size, bool)
    over[idx[rank[budget:]]] = True
    return over


def _significance_order(row: np.ndarray, p: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Order of flags by significance: smallest p, then highest score, then row."""
    return np.lexsort((row, -np.nan_to_num(score, nan=-np.inf), np.nan_to_num(p, nan=np.inf)))


def _with_alert_columns(out: pd.DataFrame, q: np.ndarray, suppressed: np.ndarray) -> pd.DataFrame:
    """p_value, q_value, suppressed right after the SPEC's columns; other extras keep their order."""
    out["q_value"] = q
    out["suppressed"] = pd.array(suppressed, dtype=object)
    lead = [c for c in out.columns if c not in ALERT_COLUMNS]
    spec = lead[: lead.index("status") + 1] if "status" in lead else lead
    rest = [c for c in lead if c not in spec]
    return out[spec + [c for c in ALERT_COLUMNS if c in out.columns] + rest]


# -- the daily summary ----------------------------------------------------------------------------


def summary_text(alerts: Alerts, *, top: int = 5) -> str:
    """Lines for stdout: flagged points, events, what the rules removed, the top events by severity."""
    c = alerts.counts
    lines = [
        f"alerts: {c['flagged']:,} flagged points of {c['scored']:,} scored"
        + (
            f" (expected false alarms on clean data at this threshold: about {c['expected_false_alarms']:,.1f})"
            if "expected_false_alarms" in c
            else ""
        )
        + f"; {c['events']:,} events ({c['ongoing_events']:,} still ongoing at the end of the run)"
    ]
    if c["suppressed"]:
        lines.append(
            f"  {c['flagged_by_score']:,} flagged by score; removed by "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(c["suppressed"].items()))
        )
    ev = top_events(alerts.events, top)
    if len(ev):
        lines.append(f"  top {len(ev)} by severity:")
        for r in ev.itertuples(index=False):  # at most ``top`` rows
            span = f"{r.start}" if r.n_points == 1 else f"{r.start} .. {r.end} ({r.n_points} points)"
            lines.append(
                f"    {r.unique_id!s:<16} {r.direction:<5} severity {r.severity:6.1f}  peak score {r.peak_score:5.1f} "
                f"at {r.peak_ds}  {span}  cluster {r.cluster}"
            )
    return "\n".join(lines)


def expected_false_alarms(threshold: float, n_points: int) -> float:
    """Points flagged on clean data at ``threshold`` if the calibration holds: n * P(score >= threshold)."""
    return n_points * score_to_p(threshold)


__all__ = [
    "DIRECTIONS",
    "ALERT_COLUMNS",
    "AlertRules",
    "Alerts",
    "QCurve",
    "alert_batch",
    "budget_candidates",
    "budget_keeps",
    "merge_alerts",
    "q_curves",
    "q_from_curves",
    "bh_pvalues",
    "bh_summary",
    "bh_group_keys",
    "apply_alerts",
    "bh_qvalues",
    "expected_false_alarms",
    "summary_text",
]
