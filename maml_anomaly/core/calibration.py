"""Calibrated scores: the tail probability of a residual ``|u|`` learned per cluster, and the score.

Three layers, as in scikit-learn's outlier detectors: a raw residual ``u`` (the forecast error in
units of the adapted model's own one-step error over the day before), a calibrated tail probability
``p`` of ``|u|`` learned per cluster on held-out query residuals, and a score ``z`` = the
normal-equivalent of ``p`` (``z = 3`` is as rare as a 3-sigma Gaussian point). A point is flagged
when ``z >= threshold``, which means the same false-alarm rate on every series and cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.special import log_ndtr, ndtr, ndtri

# upper-tail probabilities at which the calibration stores quantiles of |u|, each where the
# held-out sample has at least MIN_TAIL_POINTS beyond it (held-out history holds anomalies too:
# they inflate the rarest quantiles, which errs on the quiet side)
TAIL_LEVELS = (0.5, 0.25, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
MIN_TAIL_POINTS = 20
HEAVIEST_TAIL_DF = 3  # calibration tails are capped at a Student t with this many degrees of freedom
MIN_P = 1e-300
MAX_SCORE = float(-ndtri(MIN_P / 2))  # about 37


@dataclass(frozen=True)
class Calibration:
    """Tail probabilities of |u| learned on held-out residuals of one cluster.

    ``quantiles[i]`` is the value of |u| exceeded with probability ``levels[i]``. Between the
    stored points log p is interpolated linearly; beyond the last one a power law fitted over the
    last decade of levels extrapolates (log p linear in log u): u is a residual over a scale
    estimated from a day of residuals, pooled over series, so its far tail is polynomial
    (t-like); an exponential tail is far too light at the p-values Benjamini-Hochberg reaches
    across millions of points.
    """

    levels: tuple[float, ...]  # decreasing tail probabilities
    quantiles: tuple[float, ...]  # increasing |u| values
    scale_floor: float  # floor of the residual scale (normalised units) in u = residual / scale
    n_residuals: int

    def _tail_index(self) -> float:
        """Power-law index alpha of the tail, P(|U| >= u) ~ u^-alpha, over the last decade of levels."""
        lv, q = np.log(self.levels), np.log(np.asarray(self.quantiles))
        j = int(np.searchsorted(-lv, -np.log(10 * self.levels[-1]))) if len(q) > 2 else 0
        j = min(max(j, 1), len(q) - 2)
        return max((lv[j] - lv[-1]) / max(q[-1] - q[j], 1e-12), 1.0)

    def log_tail_probability(self, u_abs: np.ndarray) -> np.ndarray:
        """log P(|U| >= u_abs) for clean points, never underflowing (NaN stays NaN)."""
        u = np.asarray(u_abs, dtype=np.float64)
        q, lv = np.asarray(self.quantiles), np.log(self.levels)
        inner = np.interp(u, q, lv)  # flat outside [q0, q-1]: fixed below
        below = np.log1p(-np.clip(u / q[0], 0.0, 1.0) * (1.0 - self.levels[0]))  # 1 at 0 -> levels[0]
        beyond = lv[-1] - self._tail_index() * np.log(np.maximum(u, q[-1]) / q[-1])
        return np.minimum(np.where(u <= q[0], below, np.where(u >= q[-1], beyond, inner)), 0.0)

    def tail_probability(self, u_abs: np.ndarray) -> np.ndarray:
        """P(|U| >= u_abs) for clean points (NaN stays NaN), floored at MIN_P."""
        return np.clip(np.exp(self.log_tail_probability(u_abs)), MIN_P, 1.0)

    def quantile(self, p: float) -> float:
        """The |u| exceeded with probability p (inverse of :meth:`tail_probability`)."""
        lp, q, lv = np.log(max(p, MIN_P)), np.asarray(self.quantiles), np.log(self.levels)
        if lp >= lv[0]:
            return float(q[0] * (1.0 - p) / (1.0 - self.levels[0]))
        if lp <= lv[-1]:
            return float(q[-1] * np.exp((lv[-1] - lp) / self._tail_index()))
        return float(np.interp(-lp, -lv, q))

    def to_dict(self) -> dict:
        return {
            "levels": list(self.levels),
            "quantiles": list(self.quantiles),
            "scale_floor": self.scale_floor,
            "n_residuals": self.n_residuals,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        return cls(
            levels=tuple(float(v) for v in data["levels"]),
            quantiles=tuple(float(v) for v in data["quantiles"]),
            scale_floor=float(data["scale_floor"]),
            n_residuals=int(data["n_residuals"]),
        )


def heaviest_tail_ratio(levels) -> np.ndarray:
    """Quantiles of |T| (Student t, :data:`HEAVIEST_TAIL_DF` df) at ``levels``, over its median."""
    t = stats.t(HEAVIEST_TAIL_DF)
    return t.isf(np.asarray(levels) / 2.0) / t.isf(0.25)


def fit_calibration(u_abs: np.ndarray, *, scale_floor: float) -> Calibration:
    """Quantiles of held-out |u| at :data:`TAIL_LEVELS` (only levels the sample supports).

    Each quantile is capped at the median times the ratio a Student t with 3 df would give: a
    tail heavier than that comes from series whose residual scale collapses (flat or quantised
    stretches, where any move is a huge u), and would squash the scores of every other series
    of the cluster (seen on NAB: the 1% quantile of one cluster was 6e8).

    Each quantile is also at least the standard normal's: a score never exceeds |u|, the
    residual in robust standard deviations. A lighter held-out tail than the Gaussian's is
    almost always a degenerate one: on a cluster of flat series with rare spikes most held-out
    residuals are exactly 0, every quantile collapsed to 0 and every clean point that moved at
    all scored about 18 (NAB's spike-density series).
    """
    u = np.asarray(u_abs, dtype=np.float64)
    u = u[np.isfinite(u)]
    if u.size < 20:
        # too few residuals: a standard-normal |u|, documented as the fallback
        u = np.abs(ndtri(np.linspace(0.0005, 0.9995, 2000)))
    levels = [p for p in TAIL_LEVELS if p * u.size >= MIN_TAIL_POINTS] or list(TAIL_LEVELS[:3])
    gaussian = -ndtri(np.asarray(levels) / 2.0)  # |N(0, 1)| quantiles at the levels
    q = np.quantile(u, 1.0 - np.asarray(levels))
    q = np.minimum(q, max(np.quantile(u, 0.5), gaussian[0]) * heaviest_tail_ratio(levels))
    q = np.maximum.accumulate(np.maximum(q, gaussian))
    q = q + np.arange(q.size) * 1e-9  # strictly increasing for interpolation
    return Calibration(
        levels=tuple(float(v) for v in levels),
        quantiles=tuple(float(v) for v in q),
        scale_floor=float(scale_floor),
        n_residuals=int(u.size),
    )


def p_to_score(p: np.ndarray) -> np.ndarray:
    """Two-sided tail probability -> normal-equivalent z (larger = more anomalous)."""
    return np.minimum(-ndtri(np.clip(p, MIN_P, 1.0) / 2.0), MAX_SCORE)


def log_p_to_score(log_p: np.ndarray) -> np.ndarray:
    """log of a two-sided tail probability -> normal-equivalent z, without a ceiling.

    Beyond p = 1e-300 (z about 37) the score keeps growing (Newton on log Phi(-z) = log p - log 2),
    so two points far in the tail still rank by how far out they are instead of tying at 37.
    """
    log_p = np.asarray(log_p, dtype=np.float64)
    z = p_to_score(np.exp(log_p))
    deep = np.isfinite(log_p) & (log_p < np.log(MIN_P))
    if deep.any():
        target = log_p[deep] - np.log(2.0)
        zd = np.sqrt(-2.0 * target)  # start: log Phi(-z) ~ -z^2 / 2
        for _ in range(30):  # log Phi(-z) is concave and smooth: Newton converges in a few steps
            f = log_ndtr(-zd) - target
            slope = -np.exp(-0.5 * zd**2 - 0.5 * np.log(2 * np.pi) - log_ndtr(-zd))  # d/dz log Phi(-z)
            zd = zd - f / slope
        z[deep] = zd
    return z


def score_to_p(z: float) -> float:
    return float(2.0 * ndtr(-z))
