"""meta-train: one MAML forecaster per cluster, its calibration and the training report."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maml_anomaly.batch import check_id_kinds, plain_ids
from maml_anomaly.commands.common import LoadedInput, command_result, load_input, locked, progress_bars, setup_torch
from maml_anomaly.config import Config
from maml_anomaly.core.tasks import (
    choose_lag_spec,
    cluster_k_shot,
    cluster_second_period,
    query_len_for_step,
    training_window_width,
)
from maml_anomaly.core.training import TrainSettings, train_cluster
from maml_anomaly.data.panel import Panel, build_panel
from maml_anomaly.data.stream import iter_series_frames
from maml_anomaly.errors import InputError, MamlAnomalyError
from maml_anomaly.locking import crash_point
from maml_anomaly.model_versions import CURRENT, non_finite_fields, non_finite_tensors
from maml_anomaly.store import (
    CLUSTERER,
    CLUSTERS,
    DETECTOR,
    DETECTOR_FORMAT,
    TRAINING_REPORT,
    ModelDir,
    open_trained,
    weight_files,
)

log = logging.getLogger("maml_anomaly.commands")

TRAIN_SAMPLE_MIN_SERIES = 200_000  # inputs with more clustered series are sampled before meta-training
TRAIN_SAMPLE_PER_CLUSTER = 4_000  # series read per cluster (training itself draws at most max_series)


@locked(model_shared=False)
def meta_train(
    *, config: Config, input: Path, model_dir: Path, overwrite: bool = False, allow_partial: bool = False
) -> dict[str, Any]:
    """Meta-train one forecaster per cluster; publish weights, calibration and report as a new version.

    Builds on fit-clusters' pending clusters (else the serving version's). Nothing is written
    until every cluster is trained and finite; the new version then replaces the serving one in
    one atomic switch, so a failed or killed run leaves the previous model serving.
    """
    md = open_trained(model_dir, for_training=True)
    md.guard_overwrite(weight_files(md) + [n for n in (DETECTOR, TRAINING_REPORT) if md.has(n)], overwrite)
    setup_torch(config)
    data = load_training_input(config, md, input)
    panel = data.panel
    if not np.isfinite(panel.values).any():
        raise InputError(
            f"input {input} has no observed values: every y is null, NaN or infinite, so there is "
            "nothing to meta-train on. Check the --value-col column and the upstream job."
        )
    names, cluster_of, period_of = series_clusters(md, panel)
    second_of = series_second_periods(md, panel)
    settings = train_settings(config)
    started = time.perf_counter()
    index: dict[str, Any] = {}
    reports: dict[str, Any] = {}
    trained: dict[str, tuple[dict[str, Any], str]] = {}  # weights file -> (tensors, cluster), written at the end
    with progress_bars() as new_bar:
        for i, name in enumerate(names):
            rows = np.flatnonzero(cluster_of == i)  # panel positions of the cluster's series
            crash_point("meta-train:between-clusters")
            if rows.size == 0:
                reports[name] = {"skipped": "none of the cluster's series is in the input", "n_series": 0}
                log.warning("cluster %s: skipped, none of its series is in the input", name)
                continue
            period = int(pd.Series(period_of[rows]).mode().iloc[0])
            steps = panel.step_seconds[rows]
            step = float(pd.Series(steps[np.isfinite(steps)]).mode().iloc[0]) if np.isfinite(steps).any() else np.nan
            query_len = query_len_for_step(step)
            second = cluster_second_period(period, second_of[rows], step)
            k = cluster_k_shot(config.train.k_shot, period, config.train.k_per_period)
            settings = dataclasses.replace(settings, k_shot=k)  # per cluster: K may follow its period
            spec = choose_lag_spec(period, panel.lengths[rows], settings.k_shot, query_len, second=second)
            log.info(
                "cluster %s: %d series, period %d, lags %s, K %d, query %d",
                name,
                rows.size,
                period,
                spec.lags,
                k,
                query_len,
            )
            bar = new_bar(f"meta-training {name} ({i + 1}/{len(names)})", settings.iterations)
            with overflow_is_divergence(name):
                model = train_cluster(
                    panel.values,
                    panel.indptr,
                    rows,
                    spec,
                    query_len,
                    settings,
                    log=lambda msg, name=name: log.info("cluster %s: %s", name, msg),  # one line per validation
                    on_iteration=lambda done, total, bar=bar: bar(done),
                )
            if model is None:
                reports[name] = {
                    "skipped": "no series is long enough for one task window",
                    "n_series": int(rows.size),
                    "window": training_window_width(spec, settings.k_shot, query_len, room=0),
                }
                log.warning("cluster %s: skipped, no series holds a full task window", name)
                continue
            file = f"cluster-{i:04d}.safetensors"
            tensors = dict(model.params)
            tensors.update({f"inner_lr/{k}": v for k, v in (model.inner_lrs or {}).items()})
            check_finite(name, tensors, model.metadata())
            trained[file] = (tensors, name)
            index[name] = {"weights": file, **model.metadata()}
            reports[name] = model.report
            errs = model.report["query_errors"]
            log.info(
                "cluster %s: adapted query mse %.4f (no adaptation %.4f, scratch %.4f, transfer %.4f, seasonal naive %.4f)",
                name,
                errs["maml_adapted"]["mse"],
                errs["maml_no_adaptation"]["mse"],
                errs["scratch_same_steps"]["mse"],
                errs["transfer_finetuned"]["mse"],
                errs["seasonal_naive"]["mse"],
            )
    skipped = check_complete(md, names, reports, allow_partial)
    extra = dict(md.read_manifest().get("extra", {}))
    extra["meta_train"] = {
        "clusters": len(names),
        "trained": len(index),
        "skipped": skipped,
        "seconds": round(time.perf_counter() - started, 2),
    }
    md = publish_trained(
        md, trained, {"format": DETECTOR_FORMAT, "clusters": index}, reports, config, data.window, extra
    )
    helped = sum(bool(r.get("adaptation_helps")) for r in reports.values())
    return command_result(
        f"meta-trained {len(index)} of {len(names)} clusters in {time.perf_counter() - started:.1f} s"
        + (f" (skipped: {', '.join(skipped)})" if skipped else "")
        + "; "
        f"adaptation beat no adaptation and training from scratch in {helped}; report: {md.dir / TRAINING_REPORT}",
        clusters=len(names),
        trained=len(index),
        skipped=skipped,
        version=md.dir.name,
        adaptation_helps=helped,
        seconds=round(time.perf_counter() - started, 2),
        report=str(md.dir / TRAINING_REPORT),
        query_errors={name: r.get("query_errors") for name, r in reports.items()},
    )


class TrainingError(MamlAnomalyError):
    """meta-train produced no usable model; nothing was published."""


def check_finite(cluster: str, tensors: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Refuse a diverged cluster (NaN or infinite weights, step sizes or calibration)."""
    bad = non_finite_tensors(tensors) + non_finite_fields({k: metadata.get(k) for k in ("inner_lr", "calibration")})
    if bad:
        raise TrainingError(
            f"meta-training of cluster {cluster} diverged: {', '.join(bad[:5])} are NaN or infinite. "
            "Nothing was written; the previous model keeps serving. Lower --meta-lr or --inner-lr "
            "(or check the cluster's input values) and rerun."
        )


@contextmanager
def overflow_is_divergence(cluster: str) -> Iterator[None]:
    """A float overflow inside the optimiser (a huge learning rate) is a diverged cluster, not a bug."""
    try:
        yield
    except (RuntimeError, OverflowError) as exc:
        if "overflow" not in str(exc).lower():
            raise
        raise TrainingError(
            f"meta-training of cluster {cluster} diverged: a training step overflowed float32 ({exc}). "
            "Nothing was written; the previous model keeps serving. Lower --meta-lr or --inner-lr "
            "(or check the cluster's input values) and rerun."
        ) from None


def check_complete(md: ModelDir, names: list[str], reports: dict[str, Any], allow_partial: bool) -> list[str]:
    """The skipped clusters; refuse a run that trained none, or fewer than all without ``allow_partial``."""
    skipped = [n for n in names if "skipped" in reports.get(n, {})]
    if not skipped:
        return skipped
    why = "; ".join(f"{n}: {reports[n]['skipped']}" for n in skipped[:5]) + ("; ..." if len(skipped) > 5 else "")
    if len(skipped) == len(names):
        raise TrainingError(
            f"meta-train trained none of the {len(names)} clusters ({why}); nothing was written and the "
            f"previous model in {md.path} keeps serving. Give more history, or a smaller --k-shot."
        )
    if not allow_partial:
        raise TrainingError(
            f"meta-train skipped {len(skipped)} of {len(names)} clusters ({why}); nothing was written and "
            f"the previous model in {md.path} keeps serving. Give more history or a smaller --k-shot, or "
            "pass --allow-partial to publish the trained clusters (the others' series score no_model)."
        )
    log.warning("published without %d of %d clusters (--allow-partial): %s", len(skipped), len(names), why)
    return skipped


def publish_trained(
    base: ModelDir,
    trained: dict[str, tuple[dict[str, Any], str]],
    detector: dict[str, Any],
    reports: dict[str, Any],
    config: Config,
    window: dict[str, Any],
    extra: dict[str, Any],
) -> ModelDir:
    """Write a new version (base's clusters + the weights, calibration and report), then serve it."""
    md = base.new_version(keep=tuple(n for n in (CLUSTERS, CLUSTERER) if base.has(n)))
    try:
        for file, (tensors, cluster) in trained.items():
            md.save_weights(file, tensors, {"cluster": cluster})
        md.save_json(DETECTOR, detector)
        md.save_json(TRAINING_REPORT, reports)
        md.write_manifest(config, config.columns, window, extra=extra, state="trained")
        crash_point("meta-train:before-switch")
        pruned = md.publish(CURRENT, config.runtime.keep_versions)
    except BaseException:
        md.discard()  # never published: the previous version keeps serving
        raise
    log.info("model version %s serves now%s", md.dir.name, f"; removed old versions {pruned}" if pruned else "")
    return md


def train_settings(config: Config) -> TrainSettings:
    t = config.train
    return TrainSettings(
        k_shot=t.k_shot,
        inner_steps=t.inner_steps,
        inner_lr=t.inner_lr,
        learn_inner_lr=t.learn_inner_lr,
        meta_batch_size=t.meta_batch_size,
        meta_lr=t.meta_lr,
        iterations=t.iterations,
        first_order=t.first_order,
        seed=t.seed,
        hidden=tuple(t.hidden),
        time_budget_s=t.time_budget_s,
    )


def load_training_input(config: Config, md: ModelDir, input: Path) -> LoadedInput:
    """The input meta-train needs: all of it when small, else a seeded sample of each cluster's series.

    Meta-training draws its tasks from at most a few thousand series per cluster, so reading
    2,000,000 series to train would only cost time and memory: above TRAIN_SAMPLE_MIN_SERIES
    series, up to TRAIN_SAMPLE_PER_CLUSTER series per cluster are picked (seeded, uniform within
    each cluster) and only their rows are read, streamed in batches.
    """
    clusters = md.load_clusters()
    if len(clusters) <= TRAIN_SAMPLE_MIN_SERIES:
        return load_input(config, input)
    rng = np.random.default_rng(config.train.seed)
    code = pd.factorize(clusters["cluster"].astype(str), sort=True)[0]  # (C,)
    order = np.lexsort((rng.random(code.size), code))  # clusters together, random order inside each
    starts = np.r_[0, np.flatnonzero(np.diff(code[order])) + 1]  # first position of each cluster
    rank = np.arange(code.size) - np.repeat(starts, np.diff(np.r_[starts, code.size]))  # (C,) rank within cluster
    picked = np.sort(order[rank < TRAIN_SAMPLE_PER_CLUSTER])
    ids = clusters["unique_id"].to_numpy()[picked]
    frames = [
        f.assign(unique_id=plain_ids(f["unique_id"]))
        for f in iter_series_frames(input, config.columns, config.input.on_duplicate, ids=ids)
    ]
    frame = pd.concat(frames, ignore_index=True)
    panel, report = build_panel(frame, config.input.snap_tolerance)
    log.info(
        "meta-train reads a sample of %d of %d series (%d per cluster at most): %s",
        panel.n_series,
        len(clusters),
        TRAIN_SAMPLE_PER_CLUSTER,
        report.summary(),
    )
    return LoadedInput(frame=frame, panel=panel, report=report)


def series_second_periods(md: ModelDir, panel: Panel) -> np.ndarray:
    """Per panel series, its second period from clusters.parquet (0 where unknown or not stored)."""
    table = md.load_clusters_table()
    out = np.zeros(panel.n_series, np.int64)
    if "second_period" not in table.column_names:
        return out
    pos = panel.positions(table.column("unique_id").to_numpy(zero_copy_only=False))
    known = pos >= 0
    out[pos[known]] = table.column("second_period").to_numpy(zero_copy_only=False).astype(np.int64)[known]
    return out


def series_clusters(md: ModelDir, panel: Panel) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Cluster names (sorted) and, per panel series, its cluster index (-1 unknown) and period."""
    clusters = md.load_clusters()
    names = sorted(clusters["cluster"].astype(str).unique().tolist())
    check_id_kinds(clusters["unique_id"], panel, md)
    pos = panel.positions(clusters["unique_id"].to_numpy())  # (C,) panel position of each row
    known = pos >= 0
    code = pd.Categorical(clusters["cluster"].astype(str), categories=names).codes.astype(np.int64)
    cluster_of = np.full(panel.n_series, -1, np.int64)
    cluster_of[pos[known]] = code[known]
    period_of = np.zeros(panel.n_series, np.int64)
    period_of[pos[known]] = clusters["period"].to_numpy(np.int64)[known]
    return names, cluster_of, period_of
