"""Alerts benchmark: is the default flag rate what it says, and does BH keep its promise?

    python -m maml_anomaly.benchmarks.alerts [--series 100000] [--json]

The cheap path (2 shared cores): one cluster forecaster meta-trained briefly on a few hundred
generated hourly series (``tests``-style seasonal panels: AR(1) noise, scales 0.1 to 100,000),
then the last day (24 points) of ``--series`` fresh series of the same generator scored in
batches with scoring.score_tasks, exactly as daily-score scores one cluster.

1. Clean data: the fraction of points flagged at the default threshold against its stated rate
   ``score_to_p(threshold)`` (daily-score's default threshold 3.0 -> 2.7e-3 per point; 4.0 -> 6.3e-5); also the observed/stated ratio at
   p-value cut-offs 1e-2, 1e-3, 1e-4, 1e-5 (how calibrated the p-values are along the tail).
2. The same series with anomalies injected into ``--anomaly-share`` of them on the scored day
   (spikes and dips of 5-10 noise units, level shifts of 3-6 units to the end of the day):
   Benjamini-Hochberg q-values over all points (alerts.bh_qvalues, as daily-score computes them),
   flags at q <= ``--fdr``; the false-discovery proportion among flags (a flag is false when the
   point was not altered) and the share of altered points found. One-step forecasts of the points
   just after an anomaly read it through their lags, so the proportion is also given without
   these "echo" flags (unaltered points at most 3 steps after an altered one). Also the share
   of injected anomalies found (at least one of its points flagged), by kind: a level shift is
   flagged at its start and then taken as the new level (docs/detector.md), so the share of its
   points found says little. It also times apply_alerts on the whole scores frame.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from maml_anomaly.config import ScoreConfig

PERIOD = 24
LENGTH = 24 * 21
FIRST = 24 * 20  # the scored day: the last 24 points
FIRST_Q = LENGTH - FIRST
ECHO_POINTS = 3  # flags this close after an altered point are counted apart as echoes


def seasonal_panel(n_series: int, length: int = LENGTH, period: int = PERIOD, seed: int = 0) -> np.ndarray:
    """(S, T) seasonal series of very different scales, levels, shapes, noise and AR(1) dynamics."""
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
    for j in range(1, length):  # AR(1) noise: a loop over time, vectorised over series
        ar[:, j] = phi * ar[:, j - 1] + eps[:, j]
    return scale * (level + shape + trend + ar)


def inject(matrix: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Anomalies in ``share`` of the series on the scored day; returns (altered copy, (S, T) labels).

    Sizes are in units of the series' one-step spread before the day (std of first differences).
    Half are spikes/dips (one point, 5-10 units), half level shifts (3-6 units to the day's end).
    """
    rng = np.random.default_rng(seed)
    s, t = matrix.shape
    out, labels = matrix.copy(), np.zeros(matrix.shape, bool)
    spread = np.std(np.diff(matrix[:, :FIRST], axis=1), axis=1)  # (S,)
    hit = np.flatnonzero(rng.random(s) < share)
    pos = FIRST + rng.integers(0, t - FIRST, hit.size)  # (A,)
    sign = rng.choice([-1.0, 1.0], hit.size)
    spike = rng.random(hit.size) < 0.5
    size = np.where(spike, rng.uniform(5, 10, hit.size), rng.uniform(3, 6, hit.size)) * sign * spread[hit]
    cols = np.arange(t)[None, :]  # (1, T)
    span = (cols >= pos[:, None]) & np.where(spike[:, None], cols == pos[:, None], True)  # (A, T)
    out[hit] += span * size[:, None]
    labels[hit] = span
    return out, labels


@dataclass(frozen=True)
class Scored:
    p_value: np.ndarray  # (S, Q)
    score: np.ndarray  # (S, Q)
    is_anomaly: np.ndarray  # (S, Q)
    y: np.ndarray
    y_hat: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


def score_day(cluster, matrix: np.ndarray, *, threshold: float, batch_size: int) -> Scored:
    """Score the last day (24 points) of every row of ``matrix`` with one cluster's forecaster."""
    from maml_anomaly.core.scoring import score_tasks

    s, t = matrix.shape
    values, indptr = matrix.reshape(-1), np.arange(s + 1, dtype=np.int64) * t
    res = score_tasks(
        cluster,
        values,
        indptr,
        np.arange(s),
        np.full(s, FIRST),
        n_query=t - FIRST,
        threshold=threshold,
        batch_size=batch_size,
    )
    return Scored(
        p_value=res.p_value,
        score=res.score,
        is_anomaly=res.is_anomaly,
        y=matrix[:, FIRST:],
        y_hat=res.y_hat,
        lower=res.lower,
        upper=res.upper,
    )


def train(n_series: int, iterations: int, seed: int, time_budget_s: float = 300.0):
    """A cluster forecaster meta-trained briefly on ``n_series`` generated series."""
    from maml_anomaly.core.tasks import lag_spec
    from maml_anomaly.core.training import TrainSettings, train_cluster

    settings = TrainSettings(iterations=iterations, max_series=n_series, time_budget_s=time_budget_s, seed=seed)
    matrix = seasonal_panel(n_series, seed=seed)
    values, indptr = matrix.reshape(-1), np.arange(n_series + 1, dtype=np.int64) * LENGTH
    return train_cluster(values, indptr, np.arange(n_series), lag_spec(PERIOD), PERIOD, settings)


def run(
    *,
    n_series: int = 100_000,
    cluster=None,
    train_series: int = 400,
    iterations: int = 300,
    threshold: float = 4.0,
    fdr: float = 0.01,
    anomaly_share: float = 0.02,
    seed: int = 0,
    chunk: int = 10_000,
    batch_size: int = 10_000,
) -> dict:
    """Both checks; returns the figures as a JSON-ready dict."""
    from maml_anomaly.core.alerts import AlertRules, apply_alerts, bh_qvalues
    from maml_anomaly.core.scoring import score_to_p

    started = time.perf_counter()
    if cluster is None:
        cluster = train(train_series, iterations, seed)
    train_s = time.perf_counter() - started
    clean_p, clean_flag, inj_p, inj_score, inj_flag, labels, frames = [], [], [], [], [], [], []
    for c, lo in enumerate(range(0, n_series, chunk)):  # chunks bound memory; each is batched inside
        m = seasonal_panel(min(chunk, n_series - lo), seed=seed + 1000 + c)
        clean = score_day(cluster, m, threshold=threshold, batch_size=batch_size)
        clean_p.append(clean.p_value.reshape(-1))
        clean_flag.append(clean.is_anomaly.reshape(-1))
        m2, lab = inject(m, anomaly_share, seed=seed + 2000 + c)
        inj = score_day(cluster, m2, threshold=threshold, batch_size=batch_size)
        inj_p.append(inj.p_value.reshape(-1))
        inj_score.append(inj.score.reshape(-1))
        inj_flag.append(inj.is_anomaly.reshape(-1))
        labels.append(lab[:, FIRST:].reshape(-1))
        frames.append(_frame(inj, lo))
    score_s = time.perf_counter() - started - train_s
    p, flag = np.concatenate(clean_p), np.concatenate(clean_flag)
    ok = np.isfinite(p)
    stated = score_to_p(threshold)
    observed = float(flag[ok].mean())
    tail = {f"{a:g}": round(float((p[ok] <= a).mean() / a), 3) for a in (1e-2, 1e-3, 1e-4, 1e-5)}
    q_clean = bh_qvalues(p)

    p2, lab, flag2 = np.concatenate(inj_p), np.concatenate(labels), np.concatenate(inj_flag)
    echo = _echo(lab.reshape(-1, FIRST_Q), ECHO_POINTS).reshape(-1)
    q = bh_qvalues(p2)
    bh = q <= fdr
    both = bh & flag2

    frame = pd.concat(frames, ignore_index=True)  # rows in the order of ``lab``
    t0 = time.perf_counter()
    alerted = apply_alerts(frame, AlertRules(fdr=fdr), threshold=threshold)
    alerts_s = time.perf_counter() - t0
    plain = apply_alerts(frame, AlertRules(), threshold=threshold)
    return {
        "benchmark": "alerts",
        "data": f"{n_series:,} generated hourly series (AR(1) noise, period 24), last day scored: 24 points each",
        "threshold": threshold,
        "clean": {
            "points": int(ok.sum()),
            "flagged": int(flag[ok].sum()),
            "observed_rate": observed,
            "stated_rate": stated,
            "ratio": round(observed / stated, 3),
            "within_factor_1_5": bool(1 / 1.5 <= observed / stated <= 1.5),
            "observed_over_nominal_at_p": tail,
            "bh_flags_at_fdr": int((q_clean <= fdr).sum()),
            "expected_false_alarms_at_2M_daily_series": round(2_000_000 * stated, 1),
            "expected_false_alarms_at_2M_hourly_series": round(2_000_000 * 24 * stated, 1),
        },
        "injected": {
            "points": int(np.isfinite(p2).sum()),
            "altered_points": int(lab.sum()),
            "fdr": fdr,
            "bh": _fdp(bh, lab),
            "bh_without_echo": _fdp(bh & ~echo, lab),
            "echo_flags": int((bh & echo).sum()),
            "bh_and_threshold": _fdp(both, lab),
            "threshold_only": _fdp(flag2, lab),
            "anomalies_found_threshold_only": _anomalies_found(flag2, lab),
            "anomalies_found_fdr": _anomalies_found(bh, lab),
            "events_fdr": _event_fdp(alerted.scores, lab),
            "events_threshold_only": _event_fdp(plain.scores, lab),
            "apply_alerts_flagged": int(alerted.scores["is_anomaly"].sum()),
            "apply_alerts_events": len(alerted.events),
            "apply_alerts_seconds": round(alerts_s, 2),
        },
        "train_seconds": round(train_s, 1),
        "score_seconds": round(score_s, 1),
        "calibration_levels": list(cluster.calibration.levels),
    }


def _event_fdp(scores: pd.DataFrame, labels: np.ndarray) -> dict:
    """Events (runs of consecutive flags) that hold no altered point, among all events."""
    from maml_anomaly.core.events import make_grid, runs

    grid = make_grid(scores["unique_id"].to_numpy(), scores["ds"].to_numpy())
    idx, run = runs(grid, scores["is_anomaly"].to_numpy(bool)[grid.order])
    if idx.size == 0:
        return {"events": 0, "false": 0, "fdp": 0.0}
    true = np.bincount(run, weights=labels[grid.order][idx]) > 0  # (E,) event holds an altered point
    return {"events": int(true.size), "false": int((~true).sum()), "fdp": round(float((~true).mean()), 5)}


def _echo(labels: np.ndarray, n: int) -> np.ndarray:
    """(S, Q) unaltered points within ``n`` points after an altered one: their lags hold the anomaly."""
    after = np.zeros(labels.shape, bool)
    for k in range(1, n + 1):  # a loop over n lags, vectorised over points
        after[:, k:] |= labels[:, :-k]
    return after & ~labels


def _anomalies_found(flags: np.ndarray, labels: np.ndarray) -> dict:
    """Share of injected anomalies (one per altered series) with at least one flagged point, by
    kind: one altered point is a spike or dip, more are a level shift. Flat (S * Q,) inputs."""
    flags, labels = flags.reshape(-1, FIRST_Q), labels.reshape(-1, FIRST_Q)  # (S, Q)
    hit = labels.any(axis=1)  # (S,)
    found = (flags & labels).any(axis=1)[hit]
    shift = labels.sum(axis=1)[hit] > 1
    share = lambda m: round(float(found[m].mean()), 4) if m.any() else None  # noqa: E731
    return {
        "anomalies": int(hit.sum()),
        "all": share(np.ones_like(shift)),
        "spike_or_dip": share(~shift),
        "level_shift": share(shift),
    }


def _fdp(flags: np.ndarray, labels: np.ndarray) -> dict:
    n = int(flags.sum())
    false = int((flags & ~labels).sum())
    return {
        "flags": n,
        "false": false,
        "fdp": round(false / n, 5) if n else 0.0,
        "recall": round(float((flags & labels).sum() / max(labels.sum(), 1)), 4),
    }


def _frame(s: Scored, offset: int) -> pd.DataFrame:
    """A scores frame of one chunk (integer ids offset by the chunk start), as the pipeline writes it."""
    n, q = s.p_value.shape
    ds = pd.Timestamp("2024-01-21") + pd.to_timedelta(np.arange(q), "h")
    ok = np.isfinite(s.p_value).reshape(-1)
    return pd.DataFrame(
        {
            "unique_id": np.repeat(np.arange(offset, offset + n), q),
            "ds": np.tile(ds.to_numpy(), n),
            "y": s.y.reshape(-1),
            "y_hat": s.y_hat.reshape(-1),
            "lower": s.lower.reshape(-1),
            "upper": s.upper.reshape(-1),
            "score": s.score.reshape(-1),
            "is_anomaly": s.is_anomaly.reshape(-1),
            "cluster": "c0",
            "status": np.where(ok, "ok", "missing_value"),
            "p_value": s.p_value.reshape(-1),
        }
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=100_000)
    ap.add_argument("--train-series", type=int, default=400)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--threshold", type=float, default=ScoreConfig().threshold, help="default: daily-score's")
    ap.add_argument("--fdr", type=float, default=0.01)
    ap.add_argument("--anomaly-share", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = run(
        n_series=args.series,
        train_series=args.train_series,
        iterations=args.iterations,
        threshold=args.threshold,
        fdr=args.fdr,
        anomaly_share=args.anomaly_share,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(out))
        return
    c, i = out["clean"], out["injected"]
    print(out["data"])
    print(
        f"clean: {c['flagged']:,} of {c['points']:,} points flagged at threshold {out['threshold']}: rate "
        f"{c['observed_rate']:.2e} vs stated {c['stated_rate']:.2e} (ratio {c['ratio']}); "
        f"observed/nominal at p cut-offs {c['observed_over_nominal_at_p']}; BH flags on clean data {c['bh_flags_at_fdr']}"
    )
    for name in ("bh", "bh_without_echo", "bh_and_threshold", "threshold_only"):
        r = i[name]
        print(
            f"injected, {name}: {r['flags']:,} flags, {r['false']:,} false (FDP {r['fdp']:.4f}), recall {r['recall']:.3f}"
        )
    for name in ("anomalies_found_threshold_only", "anomalies_found_fdr"):
        r = i[name]
        print(
            f"{name}: {r['all']} of {r['anomalies']:,} anomalies (spikes/dips {r['spike_or_dip']}, "
            f"level shifts {r['level_shift']})"
        )
    for name in ("events_fdr", "events_threshold_only"):
        r = i[name]
        print(f"{name}: {r['events']:,} events, {r['false']:,} without an altered point (FDP {r['fdp']:.4f})")
    print(
        f"apply_alerts on {i['points']:,} points: {i['apply_alerts_seconds']} s; train {out['train_seconds']} s, "
        f"score {out['score_seconds']} s"
    )


if __name__ == "__main__":
    main()
