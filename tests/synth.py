"""Small seeded synthetic panels for the detector's tests (test helper, not product code)."""

import numpy as np
import pytest


def seasonal_panel(n_series=40, length=24 * 21, period=24, seed=0):
    """(S, T) seasonal series of very different scales, levels, shapes, noise and dynamics."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    phase = rng.uniform(0, 2 * np.pi, (n_series, 1))
    amp = rng.uniform(0.5, 2.0, (n_series, 1))
    mix = rng.uniform(0.0, 0.8, (n_series, 1))
    shape = amp * (np.sin(2 * np.pi * t / period + phase) + mix * np.sin(4 * np.pi * t / period + 2 * phase))
    level = rng.uniform(3.0, 6.0, (n_series, 1))
    trend = rng.normal(0, 0.3 / length, (n_series, 1)) * t
    scale = 10.0 ** rng.uniform(-1, 5, (n_series, 1))
    phi = rng.uniform(0.0, 0.9, n_series)
    noise = rng.uniform(0.03, 0.3, n_series)
    eps = rng.normal(0, 1, (n_series, length)) * noise[:, None]
    ar = np.zeros((n_series, length))
    for j in range(1, length):  # AR(1) noise; loops over time only
        ar[:, j] = phi * ar[:, j - 1] + eps[:, j]
    return scale * (level + shape + trend + ar)


def to_buffer(matrix):
    """(S, T) -> (values, indptr) as the panel stores series."""
    s, t = matrix.shape
    return matrix.reshape(-1).copy(), np.arange(s + 1, dtype=np.int64) * t


def inject(matrix, first, n_query, seed=0, size=6.0):
    """Inject one anomaly per series inside [first, first + n_query): spike, dip, shift, outage, phase.

    Returns (changed matrix, (S, T) bool label). Sizes are in units of the series' noise-free
    day-to-day spread (the std of the seasonal residual over history), so they are comparable.
    """
    rng = np.random.default_rng(seed)
    out, labels = matrix.copy(), np.zeros(matrix.shape, dtype=bool)
    s = matrix.shape[0]
    spread = np.std(np.diff(matrix[:, :first], axis=1), axis=1)  # (S,)
    kinds = np.arange(s) % 5
    pos = first + rng.integers(2, n_query - 4, s)
    for i in range(s):  # a test helper: a loop over 40 series is fine
        p, k = pos[i], kinds[i]
        sign = rng.choice([-1, 1])
        if k == 0:  # spike / dip
            out[i, p] += sign * size * spread[i]
            labels[i, p] = True
        elif k == 1:  # level shift to the end of the day
            out[i, p : first + n_query] += sign * size * spread[i]
            labels[i, p] = True
        elif k == 2:  # outage: zeros for 3 points
            out[i, p : p + 3] = 0.0
            labels[i, p : p + 3] = True
        elif k == 3:  # flatline at the current value for 4 points
            out[i, p : p + 4] = out[i, p - 1]
            labels[i, p + 1 : p + 4] = True
        else:  # out of phase: half a period shifted for 3 points
            out[i, p : p + 3] = matrix[i, p - 12 : p - 9]
            labels[i, p : p + 3] = True
    return out, labels


TINY_SETTINGS = dict(
    k_shot=24, inner_steps=3, iterations=120, eval_every=40, hidden=(20, 20), n_val_tasks=128, max_series=60, seed=0
)


@pytest.fixture(scope="session")
def tiny_cluster():
    """A cluster forecaster meta-trained briefly on 60 hourly daily-seasonal series."""
    import torch

    from maml_anomaly.core.tasks import lag_spec
    from maml_anomaly.core.training import TrainSettings, train_cluster

    torch.set_num_threads(1)
    values, indptr = to_buffer(seasonal_panel(60, 24 * 21, seed=0))
    return train_cluster(values, indptr, np.arange(60), lag_spec(24), 24, TrainSettings(**TINY_SETTINGS))
