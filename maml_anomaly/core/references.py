"""The forecast scored per task: a share of the adapted net's correction on its reference, or one
of the simple references a user would compare it with (last value, seasonal naive)."""

from __future__ import annotations

import numpy as np

from maml_anomaly.core.adaptation import Forecasts
from maml_anomaly.core.residual_scales import residual_scale
from maml_anomaly.core.tasks import TARGET_CLIP, Tasks


GATES = (1.0, 0.75, 0.5, 0.25, 0.0)  # shares of the net's correction a task may keep, best first on ties
ANCHOR_REFERENCE, ANCHOR_LAST, ANCHOR_NAIVE = 0, 1, 2  # what a forecast stands on (see anchored)
# the candidate forecasters (share of the net's correction, anchor), preferred in this order on ties:
# the net on its reference, then the two simple references a user would check it against
CANDIDATES = tuple((g, ANCHOR_REFERENCE) for g in GATES) + ((0.0, ANCHOR_LAST), (0.0, ANCHOR_NAIVE))
SWITCH_MARGIN = 1.1  # a simple reference replaces the net only where it was more than 10% better


def anchored(anchor: np.ndarray, reference: np.ndarray, last: np.ndarray, naive: np.ndarray) -> np.ndarray:
    """Per task (anchor (B,)), the forecast it stands on: the reference, the last value or seasonal
    naive; the others (B, ...) broadcast against it."""
    a = np.asarray(anchor).reshape((-1,) + (1,) * (np.ndim(reference) - 1))
    return np.where(a == ANCHOR_LAST, last, np.where(a == ANCHOR_NAIVE, naive, reference))


def held_out_recent(n_recent: int, k_shot: int) -> slice:
    """The recent targets adaptation did not fit: those before the support (none where the support
    is every recent target, as for daily series)."""
    return slice(0, max(n_recent - k_shot, 0))


def shrink_to_reference(tasks: Tasks, forecasts: Forecasts) -> Forecasts:
    """Keep, per task, the candidate forecaster that forecast its recent points best: a share of
    the adapted net's correction on the reference, or one of the simple references (last value,
    seasonal naive).

    The candidate (:data:`CANDIDATES`) minimises the mean absolute one-step error over the recent
    targets the adaptation did not fit (a week of a sub-daily series before its support). So the
    forecast scored is never worse over that week than what a user would compare it with: on a
    noise-free cycle the reference is exact and the net's correction, learned on noisy series of
    the cluster, was a systematic error over a residual scale of almost nothing (NAB's noise-free
    daily square wave: 19% of its clean points flagged); on step-like telemetry the last value is
    the best forecast and a correction learned on other channels was several times worse. On
    series where the net helps its full share stays. A simple reference must beat the net's best
    share by more than 10% (:data:`SWITCH_MARGIN`): chosen on 24 held-out days, the references won
    a quarter of the sample's daily tasks by chance and made its daily forecasts 4% worse. The
    residual scale is measured here, on the forecasts kept.
    """
    corr_r = forecasts.recent - tasks.base_recent  # (B, R)
    y = tasks.recent_values  # (B, R) unclipped, NaN = missing
    held = held_out_recent(y.shape[1], tasks.x_support.shape[1])
    # without held-out points only the net's shares compete, on the support (the previous rule): in
    # sample, ten days of a flatline anomaly made the last value win and the daily forecasts stuck
    # a task without observed held-out points (a series' first day) is judged like that too: on
    # all-missing held-out points every candidate tied at 0 and the net's full share was kept (a
    # step-like channel's first-day forecasts 54x worse than the last value's)
    seen = np.isfinite(y[:, held]).any(axis=1)  # (B,) held-out points to choose on
    mae = np.empty((y.shape[0], len(CANDIDATES)))
    for j, (g, a) in enumerate(CANDIDATES):  # a handful of candidates, each batched over tasks
        err = np.abs(
            g * corr_r + anchored(np.full(y.shape[0], a), tasks.base_recent, tasks.last_recent, tasks.naive_recent) - y
        )  # (B, R)
        on_held = np.nansum(err[:, held], axis=1) / np.maximum(np.isfinite(err[:, held]).sum(axis=1), 1)
        on_all = np.nansum(err, axis=1) / np.maximum(np.isfinite(err).sum(axis=1), 1)
        mae[:, j] = np.where(seen, on_held, on_all if j < len(GATES) else np.inf)
    mae[:, len(GATES) :] *= SWITCH_MARGIN  # choosing on a few recent points is noisy: see docstring
    best = np.argmin(mae, axis=1)  # (B,) the first candidate on ties
    gate = np.array([g for g, _ in CANDIDATES])[best]
    anchor = np.array([a for _, a in CANDIDATES])[best]
    recent = gate[:, None] * corr_r + anchored(anchor, tasks.base_recent, tasks.last_recent, tasks.naive_recent)
    query = gate[:, None] * (forecasts.query - tasks.base_query) + anchored(
        anchor, tasks.base_query, tasks.last_query, tasks.naive_query
    )
    resid = np.minimum(np.abs(recent - y), 2 * TARGET_CLIP)  # as far as the net's clipped targets reach
    return Forecasts(query=query, resid_scale=residual_scale(resid), recent=recent, gate=gate, anchor=anchor)
