"""fit-clusters: each series' period and cycle shape (per batch, on an engine), then the clusters of all series."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from maml_anomaly.batch import PeriodBatch, PeriodCodec, ReadTotals, summarise_batch, summarise_periods
from maml_anomaly.commands.common import command_result, locked
from maml_anomaly.config import Config
from maml_anomaly.core.clustering import PeriodClusterer, step_tag
from maml_anomaly.core.periodicity import calendar_periods
from maml_anomaly.data.panel import Panel
from maml_anomaly.engines import Source, get_engine
from maml_anomaly.model_versions import PENDING
from maml_anomaly.store import ModelDir

log = logging.getLogger("maml_anomaly.commands")

STREAM_ROWS = 1_000_000  # input rows per batch of whole series


@locked(model_shared=False)
def fit_clusters(
    *,
    config: Config,
    input: Path,
    model_dir: Path,
    overwrite: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Detect each series' period, group the series and write clusters.parquet + manifest.

    The input is read in batches of whole series: each batch keeps only per-series summaries
    (period, strength, cycle shape, from :func:`~maml_anomaly.batch.summarise_batch`), and the
    clusters are fitted on those at the end, so memory is set by the batch size and the number
    of series, not the rows. The engine decides where the batches are summarised.
    """
    runner = get_engine(engine, config, address=ray_address)
    md = ModelDir(model_dir)
    md.check_fresh(overwrite)
    cc = config.clusters
    t0 = time.perf_counter()
    source = Source(Path(input), config.columns, config.input.on_duplicate, batch_rows=STREAM_ROWS)
    totals = ReadTotals()
    batches = []
    for batch, report, lo, hi in runner.map_batches(summarise_with_limits, config, source, PeriodCodec()):
        totals.add_counts(report.to_dict(), lo, hi)
        batches.append(batch)
    totals.log(input)
    if totals.counts.get("off_grid", 0):
        log.warning("%d rows lie off their series' regular grid; they are kept and reported", totals.counts["off_grid"])
    with threadpool_limits(limits=config.runtime.threads, user_api="blas"):  # tiny matmuls
        clusters, states, groups, too_short = finish_periods(batches, cc)
    seconds = time.perf_counter() - t0
    table = _cluster_table(clusters)
    md.prepare(overwrite)
    md.save_clusters(clusters)
    md.save_json("clusterer", {"format_version": 1, "step_groups": states})
    step_ns = clusters["step"].to_numpy().astype(np.int64)
    result = {
        "series": len(clusters),
        "clusters": table,
        "periodic": int((clusters["period"] > 0).sum()),
        "aperiodic": int((clusters["period"] == 0).sum()),
        "too_short": int(too_short.sum()),
        "steps": [{"step": step_tag(s / 1e9), "series": int((step_ns == s).sum())} for s in groups],
        "seconds": round(seconds, 2),
    }
    md.write_manifest(config, config.columns, totals.window(), extra={"fit_clusters": result}, state="clustered")
    md.publish(PENDING, config.runtime.keep_versions)  # scoring keeps the current version until meta-train
    return command_result(_fit_clusters_text(result, md.path), **result)


def summarise_with_limits(config: Config, frame: pd.DataFrame) -> tuple[PeriodBatch, Any, Any, Any]:
    """summarise_batch on ``runtime.threads`` BLAS threads, with the batch's first and last timestamp."""
    ds = frame["ds"].to_numpy()
    with threadpool_limits(limits=config.runtime.threads, user_api="blas"):  # tiny matmuls
        batch, report = summarise_batch(config, frame)
    return batch, report, (ds.min() if len(ds) else None), (ds.max() if len(ds) else None)


def periods_and_clusters(panel: Panel, cc: Any) -> tuple[pd.DataFrame, list[dict[str, Any]], list[int], np.ndarray]:
    """Periods and clusters of a whole panel: what batched fit-clusters gives for the same series."""
    return finish_periods([summarise_periods(panel, cc)], cc)


def finish_periods(
    batches: list[PeriodBatch], cc: Any
) -> tuple[pd.DataFrame, list[dict[str, Any]], list[int], np.ndarray]:
    """Per step group: PeriodClusterer on the kept cycle shapes; the clusters frame (series sorted by id)."""
    b = concat_period_batches(batches)
    batches.clear()
    step_ns, period, n = b.step_ns, b.period, b.ids.size
    cluster = np.empty(n, dtype=object)
    too_short = np.zeros(n, bool)
    steps = [int(s) for s in np.unique(step_ns[step_ns > 0])]
    groups = sorted(steps, key=lambda s: (-int((step_ns == s).sum()), s))  # largest group first
    prefixed = len(groups) > 1  # names carry the step only when steps differ ("1h-p24")
    states = []
    for s in groups:
        rows = np.flatnonzero(step_ns == s)  # (G,)
        seconds = s / 1e9
        cal = calendar_periods(seconds)
        too_short[rows] = b.n_obs[rows] < 2 * (min(cal) if cal else 3)
        model = PeriodClusterer(
            min_cluster_size=cc.min_cluster_size, max_subclusters=cc.max_subclusters, seed=0
        ).fit_profiles(period[rows], lambda p, _rows, s=s: b.shapes[(s, p)][1])
        prefix = f"{step_tag(seconds)}-" if prefixed else ""
        cluster[rows] = _prefixed(model.labels_, prefix)
        states.append({"step_seconds": seconds, "prefix": prefix, "clusterer": model.to_dict()})
    no_step = step_ns == 0  # a single point: no step, no period
    if no_step.any():
        too_short |= no_step
        cluster[no_step] = _fallback_cluster(states, cluster, step_ns, groups)
    clusters = pd.DataFrame(
        {
            "unique_id": b.ids,
            "cluster": cluster.astype(str),
            "period": period,
            "strength": b.strength.round(6),
            "second_period": b.second,
            "step": np.where(step_ns > 0, step_ns, np.iinfo(np.int64).min).view("m8[ns]"),  # NaT: no step
            "n_obs": b.n_obs,
        }
    )
    return clusters, states, groups, too_short


def concat_period_batches(batches: list[PeriodBatch]) -> PeriodBatch:
    """One summary for all batches, series in id order (the bucketed stream of unsorted input is not)."""

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(x, name) for x in batches])

    ids = cat("ids")
    offsets = np.cumsum([0] + [x.ids.size for x in batches])
    shapes: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for key in sorted({k for x in batches for k in x.shapes}):
        got = [(x.shapes[key][0] + off, x.shapes[key][1]) for x, off in zip(batches, offsets) if key in x.shapes]
        shapes[key] = (np.concatenate([r for r, _ in got]), np.concatenate([q for _, q in got]))
    out = PeriodBatch(ids, cat("step_ns"), cat("period"), cat("strength"), cat("second"), cat("n_obs"), shapes)
    if ids.size < 2 or bool(np.all(ids[1:] > ids[:-1])):
        return out
    order = np.argsort(ids, kind="stable")  # (S,) new position -> old
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)  # old position -> new
    moved = {}
    for key, (rows, prof) in shapes.items():
        new = rank[rows]
        o = np.argsort(new, kind="stable")
        moved[key] = (new[o], prof[o])
    return PeriodBatch(
        *(getattr(out, f)[order] for f in ("ids", "step_ns", "period", "strength", "second", "n_obs")), moved
    )


def _prefixed(labels: np.ndarray, prefix: str) -> np.ndarray:
    """Cluster names with a step prefix (one string per cluster, not per series)."""
    if not prefix:
        return labels
    names, inverse = np.unique(labels.astype(str), return_inverse=True)
    return np.asarray([prefix + n for n in names], dtype=object)[inverse]


def _fallback_cluster(states: list[dict[str, Any]], cluster: np.ndarray, step_ns: np.ndarray, groups: list[int]) -> str:
    """Cluster for series without a step: the largest step group's aperiodic cluster (or its largest)."""
    if not groups:
        return "p0"
    main = cluster[step_ns == groups[0]].astype(str)
    aperiodic = f"{states[0]['prefix']}p0"
    if (main == aperiodic).any():
        return aperiodic
    names, counts = np.unique(main, return_counts=True)
    return str(names[np.argmax(counts)])


def _cluster_table(clusters: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per cluster: name, most common period, size (largest first, then by name)."""
    g = clusters.groupby("cluster", sort=True)
    table = pd.DataFrame({"size": g.size(), "period": g["period"].agg(lambda p: int(p.mode().iloc[0]))})
    table = table.reset_index().sort_values(["size", "cluster"], ascending=[False, True])
    return [
        {"cluster": str(r.cluster), "period": int(r.period), "size": int(r.size)} for r in table.itertuples(index=False)
    ]


def _fit_clusters_text(summary: dict[str, Any], path: Path, max_rows: int = 15) -> str:
    lines = [
        f"fit-clusters: {summary['series']:,} series in {len(summary['clusters'])} clusters -> {path}",
        f"  periodic {summary['periodic']:,}, aperiodic {summary['aperiodic']:,} "
        f"(too short to tell: {summary['too_short']:,}); steps: "
        + ", ".join(f"{s['step']} x {s['series']:,}" for s in summary["steps"]),
        f"  {'cluster':<16} {'period':>7} {'series':>10}",
    ]
    for row in summary["clusters"][:max_rows]:
        lines.append(f"  {row['cluster']:<16} {row['period']:>7} {row['size']:>10,}")
    if len(summary["clusters"]) > max_rows:
        rest = summary["clusters"][max_rows:]
        lines.append(f"  ... {len(rest)} more clusters, {sum(r['size'] for r in rest):,} series")
    lines.append(f"  {summary['seconds']:.1f} s for periods and clusters")
    return "\n".join(lines)
