"""The only place that sequences I/O, compute and artifacts: one keyword-only function per command.

Each function takes a :class:`~maml_anomaly.config.Config` plus the command's paths, raises
:class:`~maml_anomaly.errors.MamlAnomalyError` subclasses for anything the user can fix, and
returns a JSON-ready summary dict. The key ``"summary"`` holds the one-line human summary that
the CLI prints (with ``--json`` the CLI prints the whole dict instead).

Order inside a command: check the cheap things first (model directory, output path), then read
and validate the input, then compute, then write (atomically). Nothing is written before the
input has been validated, so a bad input never leaves a partial output or a damaged model.

Commands whose compute lands with later issues raise "not implemented yet" in their own block
below, after the input and model-directory checks that are already final.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from maml_anomaly.artifacts import CLUSTERS, ModelDir, jsonable
from maml_anomaly.config import Config
from maml_anomaly.errors import ConfigError, InputError, MamlAnomalyError, ModelDirError
from maml_anomaly.io import SCORE_COLUMNS, ReadReport, build_panel, read_long, write_parquet_atomic
from maml_anomaly.panel import Panel

log = logging.getLogger(__name__)

DAY = np.timedelta64(1, "D")


# -- shared steps ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedInput:
    """A validated input: the long frame (sorted, deduplicated), its panel and what reading found."""

    frame: pd.DataFrame  # unique_id, ds, y sorted by (unique_id, ds)
    panel: Panel
    report: ReadReport

    @property
    def window(self) -> dict[str, Any]:
        """The data window, as stored in the manifest."""
        ds = self.frame["ds"]
        return {
            "start": ds.min(),
            "end": ds.max(),
            "rows": self.report.rows,
            "series": self.report.series,
        }


def load_input(config: Config, input: Path) -> LoadedInput:
    """Read, validate and build the panel of an input (InputError on anything wrong)."""
    frame = read_long(input, config.columns, config.input.on_duplicate)
    panel, report = build_panel(frame, config.input.snap_tolerance)
    log.info("read %s: %s", input, report.summary())
    if report.off_grid:
        log.warning(
            "%d rows lie off their series' regular grid; they are kept (Panel.off_grid) and reported",
            report.off_grid,
        )
    return LoadedInput(frame=frame, panel=panel, report=report)


def setup_torch(config: Config) -> str:
    """Set torch's thread count and resolve the device ("auto" -> cuda when available)."""
    import torch

    torch.set_num_threads(config.runtime.threads)
    device = config.runtime.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for, but torch sees no CUDA device on this machine. "
            "Use --device cpu (or auto)."
        )
    log.debug("torch: device %s, %d thread(s)", device, config.runtime.threads)
    return device


def parse_day(value: str, option: str) -> np.datetime64:
    """A YYYY-MM-DD option as datetime64[ns] midnight (InputError with the fix otherwise)."""
    try:
        day = pd.Timestamp(pd.to_datetime(value, format="%Y-%m-%d"))
    except (ValueError, TypeError):
        raise InputError(f"{option} expects a date as YYYY-MM-DD; found {value!r}.") from None
    return np.datetime64(day.as_unit("ns").to_datetime64(), "ns")


def resolve_day(frame: pd.DataFrame, date: str | None) -> np.datetime64:
    """The calendar day to score: ``date`` (which must have data) or the input's last day."""
    ds = frame["ds"].to_numpy(dtype="datetime64[ns]")
    last = ds.max().astype("datetime64[D]").astype("datetime64[ns]")
    if date is None:
        return last
    day = parse_day(date, "--date")
    if not np.any((ds >= day) & (ds < day + DAY)):
        first = ds.min().astype("datetime64[D]")
        raise InputError(
            f"the input has no data on {date}; it covers {first} to {last.astype('datetime64[D]')}. "
            "Choose a --date inside that range, or leave --date out to score the last day."
        )
    return day


def resolve_range(frame: pd.DataFrame, start: str | None, end: str | None) -> tuple[np.datetime64, np.datetime64]:
    """Backtest days [first, last] (inclusive) within the input's data."""
    ds = frame["ds"].to_numpy(dtype="datetime64[ns]")
    data_first = ds.min().astype("datetime64[D]").astype("datetime64[ns]")
    data_last = ds.max().astype("datetime64[D]").astype("datetime64[ns]")
    first = parse_day(start, "--start") if start else data_first
    last = parse_day(end, "--end") if end else data_last
    if start and end and first > last:
        raise InputError(f"--start {start} is after --end {end}; give a start on or before the end.")
    if first > last or not np.any((ds >= first) & (ds < last + DAY)):
        raise InputError(
            f"the input has no data between {first.astype('datetime64[D]')} and "
            f"{last.astype('datetime64[D]')}; it covers {data_first.astype('datetime64[D]')} to "
            f"{data_last.astype('datetime64[D]')}. Choose --start/--end inside that range."
        )
    return max(first, data_first), min(last, data_last)


def check_output(output: Path) -> None:
    """The scores output must be a file path whose folder can be made."""
    if output.is_dir():
        raise InputError(f"--output {output} is a directory; expected the path of a parquet file to write.")
    parent = output.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"--output {output}: {parent} is a file, so the folder cannot be made.")


def open_trained(model_dir: Path) -> ModelDir:
    """A model directory with a valid manifest and clusters (ModelDirError otherwise)."""
    md = ModelDir(model_dir)
    md.read_manifest()
    if not md.has(CLUSTERS):
        raise ModelDirError(
            f"model directory {md.path} has no {CLUSTERS}. Run fit-clusters with this --model-dir first."
        )
    return md


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Any]:
    """A rich progress bar on stderr when it is a terminal; a no-op otherwise.

    Use as ``with progress("scoring", n_batches) as advance: ... advance(1)``.
    """
    if not sys.stderr.isatty() or not log.isEnabledFor(logging.INFO):
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def _not_implemented(command: str, issue: int) -> MamlAnomalyError:
    return MamlAnomalyError(
        f"{command} is not implemented yet: it lands with issue #{issue}. The input and the "
        "options were checked and are fine."
    )


def _summary(text: str, **fields: Any) -> dict[str, Any]:
    return {"summary": text, **fields}


# -- fit-clusters (compute: issue #4) -------------------------------------------------------------

# Longest history used to find a period: 4 cycles of the longest calendar period (a week of
# 5-minute steps: 8064 points), at least 1024 points; and a group's matrix stays under ~1.5 GB.
_HISTORY_CYCLES = 4
_MIN_HISTORY = 1024
_MATRIX_BYTES = 1_500_000_000
_DETECT_ROWS = 200_000  # rows per tail_matrix chunk while detecting periods


def fit_clusters(*, config: Config, input: Path, model_dir: Path, overwrite: bool = False) -> dict[str, Any]:
    """Detect each series' period, group the series and write clusters.parquet + manifest."""
    import time

    from threadpoolctl import threadpool_limits

    from maml_anomaly.clustering import step_tag

    md = ModelDir(model_dir)
    md.check_fresh(overwrite)
    data = load_input(config, input)
    panel, cc, window = data.panel, config.clusters, data.window
    del data  # the long frame is not needed any more: free it before the matrices are built
    t0 = time.perf_counter()
    with threadpool_limits(limits=config.runtime.threads, user_api="blas"):  # tiny matmuls
        clusters, states, groups, too_short = _periods_and_clusters(panel, cc)
    seconds = time.perf_counter() - t0
    table = _cluster_table(clusters)
    md.prepare(overwrite)
    md.save_clusters(clusters)
    md.save_json("clusterer", {"format_version": 1, "step_groups": states})
    step_ns = clusters["step"].to_numpy().astype(np.int64)
    summary = {
        "series": int(panel.n_series),
        "clusters": table,
        "periodic": int((clusters["period"] > 0).sum()),
        "aperiodic": int((clusters["period"] == 0).sum()),
        "too_short": int(too_short.sum()),
        "steps": [{"step": step_tag(s / 1e9), "series": int((step_ns == s).sum())} for s in groups],
        "seconds": round(seconds, 2),
    }
    md.write_manifest(config, config.columns, window, extra={"fit_clusters": summary})
    return _summary(_fit_clusters_text(summary, md.path), **summary)


def _periods_and_clusters(panel: Panel, cc: Any) -> tuple[pd.DataFrame, list[dict[str, Any]], list[int], np.ndarray]:
    """Per step group: tail matrix -> detect_periods -> PeriodClusterer; the clusters frame."""
    from maml_anomaly.clustering import PeriodClusterer, step_tag
    from maml_anomaly.periodicity import calendar_periods, detect_periods

    step_ns = np.where(np.isnat(panel.step), 0, panel.step.astype(np.int64))  # (S,) 0 = no step
    lengths = panel.lengths
    n_obs = _observed_per_series(panel)  # (S,)
    period = np.zeros(panel.n_series, np.int64)
    strength = np.zeros(panel.n_series, np.float64)
    second = np.zeros(panel.n_series, np.int64)
    cluster = np.empty(panel.n_series, dtype=object)
    too_short = np.zeros(panel.n_series, bool)
    steps = [int(s) for s in np.unique(step_ns[step_ns > 0])]
    groups = sorted(steps, key=lambda s: (-int((step_ns == s).sum()), s))  # largest group first
    prefixed = len(groups) > 1  # names carry the step only when steps differ ("1h-p24")
    states = []
    for s in groups:
        rows = np.flatnonzero(step_ns == s)  # (G,)
        seconds = s / 1e9
        cal = calendar_periods(seconds)
        longest = max([*cal, cc.max_period, 1])
        n_hist = int(min(lengths[rows].max(), max(_HISTORY_CYCLES * longest, _MIN_HISTORY)))
        n_hist = int(max(8, min(n_hist, _MATRIX_BYTES // (8 * rows.size))))
        matrix = np.empty((rows.size, n_hist))  # (G, n_hist)
        for lo in range(0, rows.size, _DETECT_ROWS):
            matrix[lo : lo + _DETECT_ROWS] = panel.tail_matrix(n_hist, rows[lo : lo + _DETECT_ROWS])
        found = detect_periods(matrix, seconds, max_period=cc.max_period, min_strength=cc.min_strength)
        period[rows], strength[rows], second[rows] = found.period, found.strength, found.second_period
        too_short[rows] = n_obs[rows] < 2 * (min(cal) if cal else 3)
        model = PeriodClusterer(
            min_cluster_size=cc.min_cluster_size, max_subclusters=cc.max_subclusters, seed=0
        ).fit(matrix, found.period)
        del matrix
        prefix = f"{step_tag(seconds)}-" if prefixed else ""
        cluster[rows] = _prefixed(model.labels_, prefix)
        states.append({"step_seconds": seconds, "prefix": prefix, "clusterer": model.to_dict()})
    no_step = step_ns == 0  # a single point: no step, no period
    if no_step.any():
        too_short |= no_step
        cluster[no_step] = _fallback_cluster(states, cluster, step_ns, groups)
    clusters = pd.DataFrame(
        {
            "unique_id": panel.ids,
            "cluster": cluster.astype(str),
            "period": period,
            "strength": strength.round(6),
            "second_period": second,
            "step": panel.step,
            "n_obs": n_obs,
        }
    )
    return clusters, states, groups, too_short


def _prefixed(labels: np.ndarray, prefix: str) -> np.ndarray:
    """Cluster names with a step prefix (one string per cluster, not per series)."""
    if not prefix:
        return labels
    names, inverse = np.unique(labels.astype(str), return_inverse=True)
    return np.asarray([prefix + n for n in names], dtype=object)[inverse]


def _observed_per_series(panel: Panel) -> np.ndarray:
    """(S,) non-missing grid values per series (one cumulative sum, no loop over series)."""
    seen = np.concatenate([[0], np.cumsum(~np.isnan(panel.values))])  # (N+1,)
    return (seen[panel.indptr[1:]] - seen[panel.indptr[:-1]]).astype(np.int64)


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


# -- meta-train (compute: issue #5) ---------------------------------------------------------------

DETECTOR = "detector.json"  # cluster -> weights file and what scoring needs to rebuild the model
TRAINING_REPORT = "training_report.json"
DETECTOR_FORMAT = 1


def meta_train(*, config: Config, input: Path, model_dir: Path, overwrite: bool = False) -> dict[str, Any]:
    """Meta-train one forecaster per cluster; write weights and the training report."""
    import time

    from maml_anomaly.tasks import choose_lag_spec, query_len_for_step, window_width
    from maml_anomaly.training import train_cluster

    md = open_trained(model_dir)
    md.guard_overwrite(_weight_files(md) + [n for n in (DETECTOR, TRAINING_REPORT) if md.has(n)], overwrite)
    setup_torch(config)
    data = load_input(config, input)
    panel = data.panel
    names, cluster_of, period_of = _series_clusters(md, panel)
    settings = _train_settings(config)
    started = time.perf_counter()
    index: dict[str, Any] = {}
    reports: dict[str, Any] = {}
    with progress("meta-training", len(names)) as advance:
        for i, name in enumerate(names):
            rows = np.flatnonzero(cluster_of == i)  # panel positions of the cluster's series
            period = int(pd.Series(period_of[rows]).mode().iloc[0])
            steps = panel.step_seconds[rows]
            step = float(pd.Series(steps[np.isfinite(steps)]).mode().iloc[0]) if np.isfinite(steps).any() else np.nan
            query_len = query_len_for_step(step)
            spec = choose_lag_spec(period, panel.lengths[rows], settings.k_shot, query_len)
            log.info("cluster %s: %d series, period %d, lags %s, query %d", name, rows.size, period, spec.lags, query_len)
            model = train_cluster(
                panel.values, panel.indptr, rows, spec, query_len, settings,
                log=lambda msg, name=name: log.debug("cluster %s: %s", name, msg),
            )
            advance(1)
            if model is None:
                reports[name] = {"skipped": "no series is long enough for one task window", "n_series": int(rows.size),
                                 "window": window_width(spec, settings.k_shot, query_len)}
                log.warning("cluster %s: skipped, no series holds a full task window", name)
                continue
            file = f"cluster-{i:04d}.safetensors"
            tensors = dict(model.params)
            tensors.update({f"inner_lr/{k}": v for k, v in (model.inner_lrs or {}).items()})
            md.save_weights(file, tensors, {"cluster": name})
            index[name] = {"weights": file, **model.metadata()}
            reports[name] = model.report
            errs = model.report["query_errors"]
            log.info(
                "cluster %s: adapted query mse %.4f (no adaptation %.4f, scratch %.4f, transfer %.4f, seasonal naive %.4f)",
                name, errs["maml_adapted"]["mse"], errs["maml_no_adaptation"]["mse"], errs["scratch_same_steps"]["mse"],
                errs["transfer_finetuned"]["mse"], errs["seasonal_naive"]["mse"],
            )
    md.save_json(DETECTOR, {"format": DETECTOR_FORMAT, "clusters": index})
    md.save_json(TRAINING_REPORT, reports)
    extra = dict(md.read_manifest().get("extra", {}))
    extra["meta_train"] = {"clusters": len(names), "trained": len(index), "seconds": round(time.perf_counter() - started, 2)}
    md.write_manifest(config, config.columns, data.window, extra=extra)
    helped = sum(bool(r.get("adaptation_helps")) for r in reports.values())
    return _summary(
        f"meta-trained {len(index)} of {len(names)} clusters in {time.perf_counter() - started:.1f} s; "
        f"adaptation beat no adaptation and training from scratch in {helped}; report: {md.path / TRAINING_REPORT}",
        clusters=len(names),
        trained=len(index),
        adaptation_helps=helped,
        seconds=round(time.perf_counter() - started, 2),
        report=str(md.path / TRAINING_REPORT),
        query_errors={name: r.get("query_errors") for name, r in reports.items()},
    )


def _weight_files(md: ModelDir) -> list[str]:
    return sorted(p.name for p in md.path.glob("*.safetensors"))


def _train_settings(config: Config):
    from maml_anomaly.training import TrainSettings

    t = config.train
    return TrainSettings(
        k_shot=t.k_shot, inner_steps=t.inner_steps, inner_lr=t.inner_lr, learn_inner_lr=t.learn_inner_lr,
        meta_batch_size=t.meta_batch_size, meta_lr=t.meta_lr, iterations=t.iterations, first_order=t.first_order,
        seed=t.seed, hidden=tuple(t.hidden), time_budget_s=t.time_budget_s,
    )


def _series_clusters(md: ModelDir, panel: Panel) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Cluster names (sorted) and, per panel series, its cluster index (-1 unknown) and period."""
    clusters = md.load_clusters()
    names = sorted(clusters["cluster"].astype(str).unique().tolist())
    pos = panel.positions(clusters["unique_id"].to_numpy())  # (C,) panel position of each row
    known = pos >= 0
    code = pd.Categorical(clusters["cluster"].astype(str), categories=names).codes.astype(np.int64)
    cluster_of = np.full(panel.n_series, -1, np.int64)
    cluster_of[pos[known]] = code[known]
    period_of = np.zeros(panel.n_series, np.int64)
    period_of[pos[known]] = clusters["period"].to_numpy(np.int64)[known]
    return names, cluster_of, period_of


def _load_models(md: ModelDir) -> tuple[list[str], list[Any]]:
    """Cluster names and their ClusterModels, as meta-train wrote them."""
    from maml_anomaly.scoring import ClusterModel

    if not md.has(DETECTOR):
        raise ModelDirError(
            f"model directory {md.path} has no trained forecasters ({DETECTOR} is missing). "
            "Run meta-train with this --model-dir first."
        )
    index = md.load_json(DETECTOR)
    if index.get("format") != DETECTOR_FORMAT:
        raise ModelDirError(
            f"{md.path / DETECTOR} has format {index.get('format')!r}; this version reads format "
            f"{DETECTOR_FORMAT}. Re-run meta-train with --overwrite."
        )
    names, models = [], []
    for name in sorted(index["clusters"]):
        meta = index["clusters"][name]
        tensors, _ = md.load_weights(meta["weights"])
        params = {k: v for k, v in tensors.items() if not k.startswith("inner_lr/")}
        lrs = {k[len("inner_lr/"):]: v for k, v in tensors.items() if k.startswith("inner_lr/")} or None
        names.append(name)
        models.append(ClusterModel.from_metadata(meta, params, inner_lrs=lrs))
    return names, models


# -- daily-score and backtest (compute: issue #5) -------------------------------------------------


def daily_score(
    *, config: Config, input: Path, model_dir: Path, output: Path, date: str | None = None
) -> dict[str, Any]:
    """Score one calendar day (default: the input's last day); write the scores atomically."""
    if date is not None:
        parse_day(date, "--date")
    check_output(output)
    md = open_trained(model_dir)
    device = setup_torch(config)
    data = load_input(config, input)
    day = resolve_day(data.frame, date)
    log.info("scoring %s", day.astype("datetime64[D]"))
    return _score_days(config, md, data, day, day, output, device)


def backtest(
    *, config: Config, input: Path, model_dir: Path, output: Path, start: str | None = None, end: str | None = None
) -> dict[str, Any]:
    """daily-score for every day of [start, end], batched across days and series, one output."""
    for value, option in ((start, "--start"), (end, "--end")):
        if value is not None:
            parse_day(value, option)
    check_output(output)
    md = open_trained(model_dir)
    device = setup_torch(config)
    data = load_input(config, input)
    first, last = resolve_range(data.frame, start, end)
    log.info("backtest %s to %s", first.astype("datetime64[D]"), last.astype("datetime64[D]"))
    return _score_days(config, md, data, first, last, output, device)


def _score_days(
    config: Config, md: ModelDir, data: LoadedInput, first: np.datetime64, last: np.datetime64, output: Path, device: str
) -> dict[str, Any]:
    """Score every input row of the days [first, last]: one task per (series, day), batched."""
    import time

    from maml_anomaly.scoring import STATUS_INSUFFICIENT, STATUS_NO_MODEL, STATUS_OK, STATUS_UNKNOWN, score_rows

    started = time.perf_counter()
    names, models = _load_models(md)
    frame, panel = data.frame, data.panel
    end = last + DAY
    ds = frame["ds"].to_numpy(dtype="datetime64[ns]")
    if ds.max() >= end:  # data after the scored days must not change anything: rebuild without it
        frame = frame[ds < end]
        panel, _ = build_panel(frame)
        ds = frame["ds"].to_numpy(dtype="datetime64[ns]")
    in_range = np.flatnonzero(ds >= first)
    rows = frame.iloc[in_range]
    row_series = _row_series(rows, panel)
    cluster_names, cluster_of, _ = _series_clusters(md, panel)
    cluster_of = _assign_unknown(config, md, panel, cluster_of, cluster_names, first)
    model_index = {name: i for i, name in enumerate(names)}
    series_model = np.array(
        [model_index.get(cluster_names[c], -1) if c >= 0 else -1 for c in range(len(cluster_names))] + [-1], np.int64
    )[np.where(cluster_of >= 0, cluster_of, len(cluster_names))]  # (S,) model per series, -1 none
    still_unknown = cluster_of < 0
    res = score_rows(
        models, panel.values, panel.indptr, panel.start.view(np.int64), panel.step.view(np.int64), series_model,
        row_series, ds[in_range].view(np.int64), rows["y"].to_numpy(np.float64, na_value=np.nan),
        threshold=config.score.threshold, batch_size=config.score.batch_size, device=device,
        unknown=still_unknown,
    )
    cluster_col = np.asarray(cluster_names + [None], dtype=object)[
        np.where(cluster_of >= 0, cluster_of, len(cluster_names))[row_series]
    ]
    y = rows["y"].to_numpy(np.float64, na_value=np.nan)
    out = pd.DataFrame(
        {
            "unique_id": _plain_ids(rows["unique_id"]),
            "ds": ds[in_range],
            "y": np.where(np.isfinite(y), y, np.nan),
            "y_hat": res.y_hat,
            "lower": res.lower,
            "upper": res.upper,
            "score": res.score,
            "is_anomaly": res.is_anomaly,
            "cluster": cluster_col,
            "status": res.status,
            "p_value": res.p_value,
        }
    )
    counts = {k: int(v) for k, v in pd.Series(res.status).value_counts().sort_index().items()}
    failed_rows = np.isin(res.status, [STATUS_INSUFFICIENT, STATUS_UNKNOWN, STATUS_NO_MODEL])
    n_series, n_failed = np.unique(row_series).size, np.unique(row_series[failed_rows]).size
    if n_series and n_failed / n_series > config.score.max_failed_fraction:
        raise MamlAnomalyError(
            f"{n_failed:,} of {n_series:,} series could not be scored ({counts} points), more than "
            f"--max-failed-fraction {config.score.max_failed_fraction}; nothing was written. Check that "
            "the input holds enough history before the scored day(s) and that meta-train ran on these series."
        )
    write_parquet_atomic(_scores_table(out), output)
    n_flags = int(res.is_anomaly.sum())
    seconds = time.perf_counter() - started
    days = f"{first.astype('datetime64[D]')}" + ("" if first == last else f" to {last.astype('datetime64[D]')}")
    return _summary(
        f"scored {len(out):,} points of {int(np.unique(row_series).size):,} series on {days}: "
        f"{n_flags:,} anomalies; {counts.get(STATUS_OK, 0):,} ok, "
        f"{len(out) - counts.get(STATUS_OK, 0):,} not scored ({', '.join(f'{k} {v:,}' for k, v in counts.items() if k != STATUS_OK) or 'none'}); "
        f"wrote {output} in {seconds:.1f} s",
        output=str(output),
        first_day=str(first.astype("datetime64[D]")),
        last_day=str(last.astype("datetime64[D]")),
        points=len(out),
        series=int(np.unique(row_series).size),
        anomalies=n_flags,
        statuses=counts,
        threshold=config.score.threshold,
        seconds=round(seconds, 2),
    )


def _row_series(rows: pd.DataFrame, panel: Panel) -> np.ndarray:
    """(N,) panel position of every row's series (looked up once per id, not per row)."""
    col = rows["unique_id"]
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = col.cat.categories.to_numpy()
        cats = cats.astype(np.int64) if cats.dtype.kind in "iu" else cats.astype(object)
        return panel.positions(cats)[col.cat.codes.to_numpy()]
    return panel.positions(col.to_numpy())


def _plain_ids(col: pd.Series) -> np.ndarray:
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = col.cat.categories.to_numpy()
        return cats[col.cat.codes.to_numpy()]
    return col.to_numpy()


CLUSTERER = "clusterer.json"  # PeriodClusterer state written by fit-clusters
ASSIGN_MIN_POINTS = 28  # observed points before the scored day an unseen series needs to get a cluster
ASSIGN_WINDOW = 4096  # at most this many recent points feed its period detection
ASSIGN_CHUNK = 10_000


def _assign_unknown(
    config: Config, md: ModelDir, panel: Panel, cluster_of: np.ndarray, names: list[str], first: np.datetime64
) -> np.ndarray:
    """Series fit-clusters never saw get a cluster from their own history before ``first``.

    Per step group that fit-clusters knows (clusterer.json), their period is detected and that
    group's PeriodClusterer predicts the cluster, batched in chunks. Series with fewer than
    ASSIGN_MIN_POINTS observed points, or with a step fit-clusters never saw, stay unknown.
    """
    from maml_anomaly.tasks import gather_windows

    unknown = np.flatnonzero(cluster_of < 0)
    if unknown.size == 0 or not md.has(CLUSTERER):
        return cluster_of
    from maml_anomaly.clustering import PeriodClusterer
    from maml_anomaly.periodicity import detect_periods

    groups = {float(g["step_seconds"]): g for g in md.load_json(CLUSTERER).get("step_groups", [])}
    code = {name: i for i, name in enumerate(names)}
    out = cluster_of.copy()
    steps = panel.step_seconds[unknown]
    start, step = panel.start.view(np.int64)[unknown], panel.step.view(np.int64)[unknown]
    safe = np.where(step > 0, step, 1)
    stop = np.clip(-((start - first.astype(np.int64)) // safe), 0, panel.lengths[unknown])  # (U,) points before first
    for value in np.unique(steps[np.isfinite(steps)]):
        state = groups.get(float(value))
        if state is None:
            continue
        clusterer = PeriodClusterer.from_dict(state["clusterer"])
        group = np.flatnonzero(steps == value)
        width = int(min(max(stop[group].max(), 1), ASSIGN_WINDOW))
        for lo in range(0, group.size, ASSIGN_CHUNK):
            g = group[lo : lo + ASSIGN_CHUNK]
            matrix = gather_windows(panel.values, panel.indptr, unknown[g], stop[g] - width, width)  # (B, width)
            enough = np.isfinite(matrix).sum(axis=1) >= ASSIGN_MIN_POINTS
            if not enough.any():
                continue
            periods = detect_periods(
                matrix[enough], float(value), max_period=config.clusters.max_period,
                min_strength=config.clusters.min_strength,
            ).period
            labels = clusterer.predict(matrix[enough], periods)
            out[unknown[g[enough]]] = [code.get(state.get("prefix", "") + str(label), -1) for label in labels]
    assigned = int((out[unknown] >= 0).sum())
    if assigned:
        log.info("assigned %d of %d series unseen by fit-clusters to a cluster from their history", assigned, unknown.size)
    return out


def _scores_table(frame: pd.DataFrame):
    import pyarrow as pa

    from maml_anomaly.io import scores_schema

    id_type = pa.int64() if frame["unique_id"].dtype.kind in "iu" else pa.string()
    schema = scores_schema(id_type).append(pa.field("p_value", pa.float64()))
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


# -- evaluate ------------------------------------------------------------------------------------


def evaluate(
    *, config: Config, scores: Path, labels: Path, far: float = 0.01, model_dir: Path | None = None
) -> dict[str, Any]:
    """Precision, recall, F1, false-alarm rate and forecast error of scores against labels.

    The forecast error compares y_hat with seasonal naive on the scored points whose lag is in the
    scores too (period: the model directory's clusters when given, else a day at the series' step,
    a week for daily series).
    """
    from maml_anomaly.evaluation import evaluate_scores, format_summary

    if not 0.0 <= far < 1.0:
        raise InputError(f"the target false-alarm rate must be in [0, 1); found {far}.")
    score_frame = _read_parquet_frame(scores, "--scores", list(SCORE_COLUMNS))
    label_cols = _parquet_columns(labels, "--labels")
    if {"unique_id", "start", "end"} <= set(label_cols):
        label_kind, need = "windows", ["unique_id", "start", "end"]
    elif {"unique_id", "ds"} <= set(label_cols):
        label_kind, need = "points", ["unique_id", "ds"]
    else:
        raise InputError(
            f"--labels {labels} has columns {label_cols}; expected labelled points (unique_id, ds) "
            "or labelled windows (unique_id, start, end, both ends inclusive)."
        )
    label_frame = _read_parquet_frame(labels, "--labels", need)
    if label_kind == "points" and len(label_frame) > 0.5 * len(score_frame):
        log.warning("--labels %s labels %d points for %d scored rows: is it a labels file?", labels,
                    len(label_frame), len(score_frame))
    log.info("evaluating %d scored points against %s labels", len(score_frame), label_kind)
    periods = open_trained(model_dir).load_clusters().set_index("unique_id")["period"] if model_dir else None
    summary = evaluate_scores(score_frame, label_frame, far=far, naive=_naive_from_scores(score_frame, periods))
    summary["labels"] = label_kind
    return _summary(format_summary(summary, name=str(scores)), **summary)


def _naive_from_scores(frame: pd.DataFrame, periods: pd.Series | None) -> pd.DataFrame | None:
    """Seasonal-naive forecasts of the scored points from the scores' own y (no MASE scale)."""
    from maml_anomaly.baselines import default_periods, seasonal_naive_reference

    rows = frame.loc[frame["status"] != "off_grid", ["unique_id", "ds", "y"]]
    rows = rows.drop_duplicates(["unique_id", "ds"])
    if rows.empty:
        return None
    period = periods if periods is not None else default_periods(rows)
    return seasonal_naive_reference(rows, period).drop(columns="scale")


def _parquet_columns(path: Path, option: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.dataset as pads

    if not path.exists():
        raise InputError(f"{option} {path} does not exist; expected a parquet file.")
    try:
        return list(pads.dataset(str(path), format="parquet").schema.names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"could not read {option} {path} as parquet ({exc}); expected a complete parquet file.") from None


def _read_parquet_frame(path: Path, option: str, required: list[str]) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.dataset as pads

    names = _parquet_columns(path, option)
    missing = [c for c in required if c not in names]
    if missing:
        raise InputError(
            f"{option} {path} lacks the columns {missing}; found {names}. Expected a scores file "
            "written by daily-score or backtest."
        )
    try:
        return pads.dataset(str(path), format="parquet").to_table().to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"could not read {option} {path} as parquet ({exc}).") from None


# -- demo ----------------------------------------------------------------------------------------

DEMO_EVAL_DAYS = 14  # the sample's labelled evaluation period: its last 14 days
DEMO_TRAIN_BUDGET_S = 45.0  # meta-training seconds for all clusters together: the demo stays under 2 minutes


def demo(*, config: Config, workdir: Path, overwrite: bool = False) -> dict[str, Any]:
    """Make sample data in workdir and run fit-clusters, meta-train, backtest and evaluate on it.

    The model sees only the history before the evaluation period (the last 14 days); backtest
    then scores every day of that period as daily-score would have, and evaluate measures the
    flags against the sample's labelled windows.
    """
    import dataclasses

    from maml_anomaly.sample import write_sample

    if workdir.exists() and not workdir.is_dir():
        raise InputError(f"--workdir {workdir} is a file; expected a folder to create or reuse.")
    if workdir.is_dir() and any(workdir.iterdir()) and not overwrite:
        raise InputError(
            f"--workdir {workdir} is not empty; refusing to overwrite a previous demo. Pass "
            "--overwrite, or choose a new folder."
        )
    workdir.mkdir(parents=True, exist_ok=True)
    paths = write_sample(workdir / "data")
    values = pd.read_parquet(paths["values"])
    last = values["ds"].max().normalize()
    first = last - pd.Timedelta(days=DEMO_EVAL_DAYS - 1)
    history = workdir / "data" / "history.parquet"
    write_parquet_atomic(values[values["ds"] < first], history)
    log.info("sample data in %s: %d series, evaluation period %s to %s", paths["values"].parent,
             values["unique_id"].nunique(), first.date(), last.date())

    model_dir, scores = workdir / "model", workdir / "scores.parquet"
    fit_clusters(config=config, input=history, model_dir=model_dir, overwrite=overwrite)
    n_clusters = max(1, ModelDir(model_dir).load_clusters()["cluster"].nunique())
    budget = min(config.train.time_budget_s, DEMO_TRAIN_BUDGET_S / n_clusters)
    train_config = dataclasses.replace(config, train=dataclasses.replace(config.train, time_budget_s=budget))
    meta_train(config=train_config, input=history, model_dir=model_dir, overwrite=True)
    backtest(config=config, input=paths["values"], model_dir=model_dir, output=scores,
             start=str(first.date()), end=str(last.date()))
    result = evaluate(config=config, scores=scores, labels=paths["labels"], model_dir=model_dir)
    top = _top_anomalies(pd.read_parquet(scores))
    files = {"data": paths["values"].parent, "model_dir": model_dir, "scores": scores}
    text = "\n".join([
        "top anomalies:",
        top.to_string(index=False) if len(top) else "  (none flagged)",
        "",
        result["summary"],
        "",
        *(f"{name}: {path}" for name, path in files.items()),
    ])
    fields = {k: v for k, v in result.items() if k != "summary"}
    return _summary(text, files=files, top_anomalies=top.to_dict(orient="records"), evaluation=fields)


def _top_anomalies(scores: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The n highest-scoring flagged points, the columns an operator reads first."""
    flagged = scores[scores["is_anomaly"].fillna(False).astype(bool)]
    cols = ["unique_id", "ds", "y", "y_hat", "lower", "upper", "score"]
    return flagged.nlargest(n, "score")[cols].reset_index(drop=True)


# -- plot (compute: issue #5) ---------------------------------------------------------------------


def plot(
    *, config: Config, input: Path, scores: Path, output: Path, series: list[str] | None = None, top: int = 5
) -> dict[str, Any]:
    """A PNG of series with their forecast band and flags (the named series, or the top anomalies)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError(
            "plot needs matplotlib, which is not installed. Install it with "
            "`pip install 'maml-anomaly[plot]'` (or `pip install matplotlib`)."
        ) from None
    if top < 1:
        raise InputError(f"--top must be at least 1; found {top}.")
    score_frame = _read_parquet_frame(scores, "--scores", list(SCORE_COLUMNS))
    data = load_input(config, input)
    del score_frame, data
    raise _not_implemented("plot", 5)


# -- bench sine (compute: issue #3) --------------------------------------------------------------


def bench_sine(
    *,
    config: Config,
    k_shot: int | None,
    iterations: int,
    seed: int,
    first_order: bool,
    learn_inner_lr: bool,
    eval_tasks: int,
) -> dict[str, Any]:
    """The paper's sine benchmark (maml_anomaly.benchmarks.sine.run_sine_benchmark)."""
    setup_torch(config)
    try:
        from maml_anomaly.benchmarks.sine import run_sine_benchmark
    except ModuleNotFoundError as exc:
        if exc.name == "maml_anomaly.benchmarks.sine":
            raise _not_implemented("bench sine", 3) from None
        raise
    result = run_sine_benchmark(
        k_shot=k_shot,
        iterations=iterations,
        seed=seed,
        first_order=first_order,
        learn_inner_lr=learn_inner_lr,
        eval_tasks=eval_tasks,
    )
    return {"summary": _sine_table(result), **result}


def _sine_table(result: dict[str, Any]) -> str:
    lines = [f"sine benchmark: {result.get('iterations')} iterations in {result.get('seconds', float('nan')):.0f} s"]
    for row in result.get("results", []):
        lines.append(
            f"  K={row.get('k_shot'):>2} steps={row.get('inner_steps'):>2}  "
            f"mse {row.get('mse', float('nan')):.3f} +- {row.get('ci95', float('nan')):.3f}"
        )
    return "\n".join(lines)


# -- bench scale (compute: issue #6) --------------------------------------------------------------


def bench_scale(*, config: Config, series: int, freq: str) -> dict[str, Any]:
    """Synthetic daily-score at scale: series/s, seconds and peak memory."""
    if series < 1:
        raise InputError(f"--series must be at least 1; found {series}.")
    if freq not in ("D", "h"):
        raise InputError(f"--freq must be D (daily) or h (hourly); found {freq!r}.")
    setup_torch(config)
    raise _not_implemented("bench scale", 6)


__all__ = [
    "jsonable",
    "LoadedInput",
    "load_input",
    "setup_torch",
    "parse_day",
    "resolve_day",
    "resolve_range",
    "check_output",
    "open_trained",
    "progress",
    "fit_clusters",
    "meta_train",
    "daily_score",
    "backtest",
    "evaluate",
    "demo",
    "plot",
    "bench_sine",
    "bench_scale",
]
