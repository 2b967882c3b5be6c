"""Stuck values: a run of (near-)identical values longer than the series' own history makes likely.

A forecaster whose reference is the last value follows a flat line (a frozen sensor, a stalled
counter): each point is close to its forecast and the residual score never fires. This module
scores the flat line itself, as a tail probability on the same scale as the residual's, so the
default threshold and Benjamini-Hochberg treat both alike.

The statistic of a point is its *depth*: how many consecutive repeats (a value within
:data:`STUCK_TOL` robust scales of the one before) end at it. Its null distribution comes from
the runs of the same task's history (the points before the scored day, the window the forecaster
reads): S(L), the probability that a run reaches L repeats, with m runs counted (every point
that starts one; a run of no repeat is a moving point):

* up to the longest run of the history (l_max repeats), a conformal estimate: (runs that
  reached L, plus 1) / (m + 1). It holds whatever the run lengths' distribution (a step-like
  series' long constant runs, heavy-tailed in MSL's telemetry, are its normal);
* beyond it, 1 / (m + 1) times the heavier of a geometric tail (c per further repeat, c = the
  history's share of repeats followed by another, Jeffreys prior: 0.5 without any repeat) and
  a power law (l_max + 1) / L: the tail of real run lengths is not known to be light.

A point whose run began in the day gets p = S(L). A run that began before the day and had
lasted ``a`` repeats when the day began gets S(L) / S(a), the chance that a run that old lasts
that much longer (without the conditioning, a long run still going at midnight, the normal state
of a step-like series, was flagged all the next day; with it, a flat line is judged once, from
its start). A series that never repeated in 216 points gives a single repeat p = 0.005 (not
flagged at the default threshold 3), two 0.0023, an 8-hour flat line 7e-4 at its end
(scoring doubles the smaller of this and the residual's p: Bonferroni over the two tests). Points
without a repeat, or missing, get p = 1, and so does every point of a task whose history never
moved. Everything is batched over tasks: no loop over series or points.
"""

from __future__ import annotations

import numpy as np

STUCK_TOL = 1e-6  # robust scales: consecutive values closer than this are the same value
PRIOR = 0.5  # Jeffreys prior on the share of repeats followed by another
TAIL_INDEX = 1.0  # beyond the longest run seen, S(L) decays at least as slowly as 1 / L


def run_depth(values: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """Consecutive repeats ending at each point (B, W) int64: 0 after a change, -1 where missing.

    values (B, W), NaN = missing (a missing point breaks a run); tol (B,) absolute tolerance.
    """
    v = np.asarray(values, dtype=np.float64)
    B, W = v.shape
    same = np.zeros((B, W), bool)
    with np.errstate(invalid="ignore"):
        same[:, 1:] = np.abs(v[:, 1:] - v[:, :-1]) <= tol[:, None]  # NaN compares False
    col = np.arange(W)[None, :]
    last_change = np.maximum.accumulate(np.where(same, 0, col), axis=1)  # (B, W)
    return np.where(np.isfinite(v), col - last_change, -1)


def stuck_log_p(
    values: np.ndarray, n_query: int, scale: np.ndarray, *, log_p_flag: float | None = None, accept_after: int = 0
) -> np.ndarray:
    """log p of the depth of each of the last ``n_query`` points of windows (B, W) under the runs
    of the window's history (its first W - n_query points); 0 (p = 1) where there is no repeat.

    ``scale`` (B,) is the task's robust scale (the tolerance is relative to it). With
    ``log_p_flag`` (the threshold's log p), a run flagged for ``accept_after`` points is taken as
    the series' new state: its later points get p = 1, as a lasting level shift is accepted.
    """
    v = np.asarray(values, dtype=np.float64)
    H = v.shape[1] - n_query
    depth = run_depth(v, STUCK_TOL * np.asarray(scale, np.float64))  # (B, W)
    hist, day = depth[:, :H], depth[:, H:]  # (B, H), (B, Q)
    L = np.maximum(day, 0)  # (B, Q)
    log_s = _survival(hist, top=v.shape[1] + 1)
    # a run that began before the day had already lasted `aged` repeats at its start: condition on it
    aged = np.where(L > np.arange(n_query)[None, :], np.maximum(hist[:, -1:], 0), 0)  # (B, Q)
    log_s_aged = log_s(aged)
    log_p = log_s(L) - log_s_aged
    live = (day >= 1) & ((hist == 0).sum(axis=1) >= 2)[:, None]  # a repeat, and a history that moved
    if log_p_flag is not None and accept_after > 0:  # flagged accept_after points ago: accepted
        earlier = L - accept_after
        live &= ~((earlier > aged) & (log_s(np.maximum(earlier, 0)) - log_s_aged <= log_p_flag))
    return np.where(live, np.minimum(log_p, 0.0), 0.0)


def _survival(hist: np.ndarray, top: int):
    """log S(L) as a function of L (B, Q) -> (B, Q): the probability that a run reaches L repeats,
    from the history's depths hist (B, H) (-1 = missing; every depth and L below ``top``). A run
    that reached depth d has exactly one point at depth d (the run still going when the history
    ends counts up to where it is: censored, not left out). One sort of the history per call."""
    B, H = hist.shape
    m = (hist == 0).sum(axis=1).astype(np.float64)[:, None]  # (B, 1) runs (each starts at depth 0)
    l_max = hist.max(axis=1, initial=-1)[:, None]  # (B, 1)
    seen = np.maximum(l_max, 0) + 1.0  # the first depth no run reached
    # the share of repeats followed by another (geometric tail beyond the longest run)
    log_c = np.log(((hist >= 2).sum(axis=1) + PRIOR) / ((hist >= 1).sum(axis=1) + 2 * PRIOR))[:, None]
    shift = (np.arange(B, dtype=np.int64) * (top + 2))[:, None]  # rows of the flat sort never overlap
    flat = (np.sort(hist, axis=1).astype(np.int64) + 1 + shift).ravel()  # (B * H,) increasing
    row_start = np.arange(B, dtype=np.int64)[:, None] * H

    def at_least(keys: np.ndarray) -> np.ndarray:  # (B, Q) history points with depth >= keys
        return H - (np.searchsorted(flat, keys.astype(np.int64) + 1 + shift, side="left") - row_start)

    def log_s(L: np.ndarray) -> np.ndarray:
        reached = at_least(L) - at_least(L + 1)  # (B, Q) runs that reached depth L
        log_conformal = np.log((reached + 1.0) / (m + 1.0))
        # beyond: the heavier of the geometric tail and a power law of index TAIL_INDEX (run
        # lengths of real telemetry are heavy-tailed)
        geometric = (L - seen).clip(min=0) * log_c
        power = -TAIL_INDEX * np.log(np.maximum(L, seen) / seen)
        beyond = np.maximum(geometric, power) - np.log(m + 1.0)
        return np.where(L <= 0, 0.0, np.minimum(np.where(L <= l_max, log_conformal, beyond), 0.0))

    return log_s
