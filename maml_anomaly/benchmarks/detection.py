"""Detection benchmark: the MAML detector beside the baselines, on sample, NAB or M4 hourly data.

    python -m maml_anomaly.benchmarks.detection --data sample|nab|msl|m4 [--methods ...] [--workdir DIR]

Per data set, every method scores the same points of the same days, and `evaluation` measures
them against the same labels:

* sample: the labelled sample data (seed 0, what the detector was tuned on; `--seed N` draws a
  fresh set from the same generator that nobody tuned on); meta-train sees the history before
  the last 14 days, every method scores the last 14 days, labels are the sample windows.
* nab: NAB's rule: the first 15% of each series is probationary (meta-train sees only that part,
  nothing is scored there); every method scores the rest; labels are NAB's combined windows.
  Duplicate timestamps (7 series) are averaged (`--on-duplicate mean`).
* msl: NASA MSL spacecraft telemetry (27 channels, a synthetic 1-minute grid): meta-train sees
  what comes before each channel's published `test_start`; every method scores from it on;
  labels are the published anomaly windows (all in the test part).
* m4: M4 hourly; meta-train sees train.parquet; every method forecasts the 48 test points one step
  ahead from observed lags; reported: MASE (in-sample seasonal scale, period 24) and the flag
  rate on the test points (no labels).

Methods: `maml` (fit-clusters, meta-train, backtest through the pipeline), `seasonal_naive`,
`holt_winters` (maml_anomaly.core.baselines). All use the same period per series: the one fit-clusters
found when `maml` runs first, otherwise the data set's hint (sample: true periods; NAB: the daily
cycle at each series' step; MSL: none, its clock is synthetic; M4: 24).

`maml_0step`: the model `maml` trained, scored with 0 inner steps (`score.inner_steps_at_scoring`):
what adaptation is worth. Peers (`adtk`, `sf_autoets`, `sf_mstl`, `sf_mstl_dayahead`, `merlion`;
maml_anomaly.benchmarks.peers) run in their own environments on the same rows and always use the
data set's hint, so their results do not depend on the detector and are cached per data set
(`--reuse-peers`). `--methods all` runs everything, `--methods peers` the peers only.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from maml_anomaly.benchmarks import peers
from maml_anomaly.config import ColumnConfig, Config
from maml_anomaly.core import baselines
from maml_anomaly.core.evaluation import evaluate_scores
from maml_anomaly.data.read import read_long
from maml_anomaly.sample import make_sample

log = logging.getLogger(__name__)
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared/data beside the repo
METHODS = ("maml", "seasonal_naive", "holt_winters")
MAML_0STEP = "maml_0step"  # the same meta-trained model scored without adaptation
ALL = ("maml", MAML_0STEP, "seasonal_naive", "holt_winters") + tuple(peers.PEERS)
LABELS = {MAML_0STEP: "maml, 0 inner steps at scoring", **peers.LABELS}
SAMPLE_DIR = Path(__file__).resolve().parents[2] / "sample_data"
EMPTY_LABELS = pd.DataFrame(
    {
        "unique_id": pd.Series([], dtype=str),
        "start": pd.Series([], dtype="datetime64[ns]"),
        "end": pd.Series([], dtype="datetime64[ns]"),
    }
)


@dataclass(frozen=True)
class Dataset:
    """What every method sees and what is measured."""

    name: str
    values: pd.DataFrame  # all rows (unique_id, ds, y), duplicates resolved
    train: pd.DataFrame  # what meta-training may see
    labels: pd.DataFrame  # windows (unique_id, start, end[, kind]); empty when unlabelled
    cutoff: pd.Series  # per series: first timestamp that is scored and measured
    start: pd.Timestamp  # first and last scored calendar day (backtest range)
    end: pd.Timestamp
    period_hint: pd.Series  # per series, used when fit-clusters has not run
    on_duplicate: str = "error"


def load_sample(root: Path = SAMPLE_DIR, eval_days: int = 14, seed: int = 0) -> Dataset:
    """The committed sample (seed 0), or a fresh draw of the same generator (another seed: data
    nobody tuned on)."""
    if seed == 0:
        values = pd.read_parquet(root / "values.parquet")
        labels = pd.read_parquet(root / "labels.parquet")
        info = pd.read_parquet(root / "series.parquet")
    else:
        values, labels, _, info = make_sample(seed=seed, eval_days=eval_days, return_info=True)
    end = values["ds"].max().normalize()
    start = end - pd.Timedelta(days=eval_days - 1)
    ids = np.sort(values["unique_id"].unique())
    return Dataset(
        f"sample_seed{seed}",
        values,
        values[values["ds"] < start],
        labels,
        pd.Series(start, index=ids),
        start,
        end,
        info.set_index("unique_id")["period"],
    )


def load_nab(root: Path = DATA / "nab", probation: float = 0.15) -> Dataset:
    values = read_long(root / "values.parquet", ColumnConfig(), on_duplicate="mean")  # the tool's policy
    values["unique_id"] = values["unique_id"].astype(str)
    rank = values.groupby("unique_id").cumcount()
    n = values.groupby("unique_id")["ds"].transform("size")
    train_mask = rank < np.floor(probation * n)
    cutoff = values[~train_mask].groupby("unique_id")["ds"].min()
    step = values.groupby("unique_id")["ds"].apply(lambda s: s.diff().median())  # small: 58 series
    hint = (pd.Timedelta(days=1) / step).round().astype(int)
    return Dataset(
        "nab",
        values,
        values[train_mask],
        pd.read_parquet(root / "windows.parquet"),
        cutoff,
        cutoff.min().normalize(),
        values["ds"].max().normalize(),
        hint,
        on_duplicate="mean",
    )


def load_msl(root: Path = DATA / "msl") -> Dataset:
    """Telemetry: the published training part of each channel is what meta-training sees."""
    values = read_long(root / "values.parquet", ColumnConfig())
    values["unique_id"] = values["unique_id"].astype(str)
    info = pd.read_parquet(root / "series.parquet")
    cutoff = info.set_index(info["unique_id"].astype(str))["test_start"].astype("datetime64[ns]")
    train = values[values["ds"] < values["unique_id"].map(cutoff)]
    ids = cutoff.index
    return Dataset(
        "msl",
        values,
        train,
        pd.read_parquet(root / "windows.parquet"),
        cutoff,
        cutoff.min().normalize(),
        values["ds"].max().normalize(),
        pd.Series(0, index=ids),
    )


def load_m4(root: Path = DATA / "m4_hourly") -> Dataset:
    train = pd.read_parquet(root / "train.parquet")
    test = pd.read_parquet(root / "test.parquet")
    values = pd.concat([train, test], ignore_index=True).sort_values(["unique_id", "ds"], ignore_index=True)
    cutoff = test.groupby("unique_id")["ds"].min()
    ids = cutoff.index
    return Dataset(
        "m4",
        values,
        train,
        EMPTY_LABELS,
        cutoff,
        cutoff.min().normalize(),
        test["ds"].max().normalize(),
        pd.Series(24, index=ids),
    )


LOADERS = {"sample": load_sample, "nab": load_nab, "msl": load_msl, "m4": load_m4}


def scored_period(scores: pd.DataFrame, cutoff: pd.Series) -> pd.DataFrame:
    """Rows at or after their series' cutoff (NAB probation, M4 test start)."""
    cut = scores["unique_id"].astype(str).map(cutoff.rename(index=str))
    return scores[scores["ds"] >= cut].reset_index(drop=True)


def run_baseline(name: str, data: Dataset, period: pd.Series) -> pd.DataFrame:
    """Score the data set's days; Holt-Winters fits its parameters before each series' cutoff."""
    extra = {"fit_before": data.cutoff} if name == "holt_winters" else {}
    return baselines.BASELINES[name](data.values, period, start=data.start, end=data.end, **extra)


TRAINING_SECTIONS = ("columns", "input", "clusters", "train")  # what a trained model depends on


def model_key(data: Dataset, config: Config) -> str:
    """Fingerprint of what meta-training sees: the training rows and the config sections it reads."""
    settings = {k: v for k, v in config.to_dict().items() if k in TRAINING_SECTIONS}
    rows = pd.util.hash_pandas_object(data.train, index=False).to_numpy()
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(rows.tobytes())
    return digest.hexdigest()[:16]


def run_maml(
    data: Dataset, workdir: Path, config: Config, reuse_model: bool = False, name: str = "maml", retrain: bool = False
) -> tuple[pd.DataFrame, pd.Series]:
    """fit-clusters and meta-train on the training part, backtest over the scored days.

    The trained model is kept in ``workdir/models/<key>`` (:func:`model_key`: training rows and
    the training config) and reused by later runs with the same key, so a change to scoring alone
    does not re-train. ``retrain``: train again anyway (the training code changed).
    reuse_model: score with the model the previous run used, whatever its key (no training).
    """
    from maml_anomaly import api as pipeline

    workdir.mkdir(parents=True, exist_ok=True)
    train_path, all_path = workdir / "train.parquet", workdir / "values.parquet"
    last, scores_path = workdir / "model_last.txt", workdir / f"scores_{name}.parquet"
    model_dir = workdir / "models" / model_key(data, config)
    if reuse_model and last.exists():
        model_dir = Path(last.read_text().strip())
    data.values.to_parquet(all_path, index=False)
    if retrain or not (model_dir / "current" / "clusters.parquet").exists():  # current: a complete training
        data.train.to_parquet(train_path, index=False)
        pipeline.fit_clusters(config=config, input=train_path, model_dir=model_dir, overwrite=True)
        pipeline.meta_train(config=config, input=train_path, model_dir=model_dir, overwrite=True, allow_partial=True)
    else:
        log.info("maml: reusing the model in %s (same training rows and config)", model_dir)
    last.write_text(str(model_dir))
    # a benchmark scores every series whatever fails (statuses are in its report), unlike a cron run
    scoring = dataclasses.replace(config, score=dataclasses.replace(config.score, max_failed_fraction=1.0))
    pipeline.backtest(
        config=scoring,
        input=all_path,
        model_dir=model_dir,
        output=scores_path,
        start=str(data.start.date()),
        end=str(data.end.date()),
    )
    clusters = pd.read_parquet(model_dir / "current" / "clusters.parquet")
    return pd.read_parquet(scores_path), clusters.set_index("unique_id")["period"]


def run(
    data_name: str,
    methods=METHODS,
    workdir: Path = Path("/tmp/maml-bench"),
    far: float = 0.01,
    config: Config | None = None,
    seed: int = 0,
    reuse_model: bool = False,
    reuse_peers: bool = False,
    peer_max_seconds: float | None = None,
    retrain: bool = False,
) -> dict:
    data = load_sample(seed=seed) if data_name == "sample" else LOADERS[data_name]()
    config = config or Config()
    period = data.period_hint
    results, measured = {}, {}
    for method in methods:
        t0 = time.perf_counter()
        if method == "maml":
            scores, period = run_maml(data, workdir / data.name, config, reuse_model, retrain=retrain)
        elif method == MAML_0STEP:
            unadapted = config.replace_from_flags({"score.inner_steps_at_scoring": 0})
            scores, period = run_maml(data, workdir / data.name, unadapted, reuse_model=True, name=method)
        elif method in peers.PEERS:  # the data set's periods, so cached results do not depend on the detector
            ran = peers.run_peer(
                method,
                data.values,
                data.period_hint,
                data.cutoff,
                start=data.start,
                end=data.end,
                folder=workdir / data.name / "peers",
                reuse=reuse_peers,
                max_seconds=peer_max_seconds,
            )
            if ran.scores is None:
                log.warning("%s on %s: not run: %s", method, data.name, ran.info["not_run"])
                results[method] = {"not_run": ran.info["not_run"]}
                continue
            scores = ran.scores
        else:
            scores = run_baseline(method, data, period)
        seconds = time.perf_counter() - t0
        if method in peers.PEERS:  # the peer's own run (cached results keep the time they took)
            seconds = ran.info["wall_seconds"]
        log.info("%s on %s: scored in %.1f s", method, data.name, seconds)
        scores = scored_period(scores, data.cutoff)
        naive = baselines.seasonal_naive_reference(data.values, period, before=data.cutoff)
        summary = evaluate_scores(scores, data.labels, far=far, naive=naive)
        summary["seconds"] = seconds
        if method in peers.PEERS:
            summary["peer"] = ran.info
        results[method] = summary
        measured[method] = (scores, naive)
    if "maml" in measured:  # a peer cut short is measured on fewer series: the detector on the same ones
        for method, (scores, naive) in measured.items():
            if method in peers.PEERS and results[method]["peer"].get("n_skipped_for_time"):
                reached = set(scores["unique_id"].astype(str))
                maml = measured["maml"][0]
                sub = evaluate_scores(
                    maml[maml["unique_id"].astype(str).isin(reached)], data.labels, far=far, naive=naive
                )
                results[method]["peer"]["maml_on_same_series"] = {
                    "n_series": len(reached),
                    "event_recall_at_far": sub["at_far"]["event_recall"],
                    "f1_default": sub["default"]["f1"],
                    "mae_ratio": sub.get("forecast", {}).get("mae_ratio_gmean"),
                }
    return {
        "data": data.name,
        "far": far,
        "config": config.to_dict(),
        "results": results,
        "periods": {str(k): int(v) for k, v in pd.Series(period).value_counts().sort_index().items()},
    }


def markdown(report: dict) -> str:
    """One table row per method."""
    head = (
        "| method | event recall @ FAR {far:.0%} | point precision @ FAR | F1 @ FAR | event recall "
        "| point precision | F1 | FAR | MASE | MASE seasonal naive | MAE ratio | worse than references | seconds |"
    )
    lines = [head.format(far=report["far"]), "|" + " --- |" * 13]
    for method, s in report["results"].items():
        if "not_run" in s:
            lines.append(f"| {LABELS.get(method, method)} | not run: {s['not_run']} |" + " |" * 10)
            continue
        f, d, fc = s["at_far"], s["default"], s.get("forecast", {})
        lines.append(
            "| "
            + " | ".join(
                [LABELS.get(method, method)]
                + [
                    _fmt(v)
                    for v in (
                        f["event_recall"],
                        f["point_precision"],
                        f["f1"],
                        d["event_recall"],
                        d["point_precision"],
                        d["f1"],
                        d["false_alarm_rate"],
                        fc.get("mase"),
                        fc.get("mase_naive"),
                        fc.get("mae_ratio_gmean"),
                        fc.get("share_worse_than_references"),
                        s["seconds"],
                    )
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def markdown_by_kind(report: dict) -> str:
    """Event recall per anomaly kind at the fixed FAR (labels with a kind column only)."""
    ran = [s for s in report["results"].values() if "not_run" not in s]
    kinds = sorted({k for s in ran for k in s["recall_by_kind"]})
    if not kinds:
        return ""
    first = ran[0]["recall_by_kind"]
    lines = [
        "| method | " + " | ".join(f"{k} ({first.get(k, {}).get('n', 0)})" for k in kinds) + " |",
        "|" + " --- |" * (len(kinds) + 1),
    ]
    for method, s in report["results"].items():
        if "not_run" in s:
            continue
        row = [_fmt(s["recall_by_kind"].get(k, {}).get("recall_at_far")) for k in kinds]
        lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.4f}" if abs(v) < 0.1 else f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=sorted(LOADERS), default="sample")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated: "
        + ", ".join(METHODS + (MAML_0STEP,) + tuple(peers.PEERS))
        + f"; 'all' = {','.join(ALL)}; 'peers' = the peers only",
    )
    parser.add_argument(
        "--reuse-model",
        action="store_true",
        help="maml: score with the model a previous run left in the workdir (no training)",
    )
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="maml: meta-train again even where a model for the same rows and config is cached",
    )
    parser.add_argument(
        "--reuse-peers",
        action="store_true",
        help="peers: read results cached in the workdir for the same inputs instead of rerunning",
    )
    parser.add_argument(
        "--peer-max-seconds",
        type=float,
        default=None,
        help="stop a peer after this many seconds; the series it did not reach are not scored",
    )
    parser.add_argument("--far", type=float, default=0.01, help="false-alarm rate for recall at fixed FAR")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/maml-bench"))
    parser.add_argument("--json", type=Path, default=None, help="also write the full report here")
    parser.add_argument("--config", type=Path, default=None, help="TOML configuration for the detector")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    parser.add_argument(
        "--seed", type=int, default=0, help="sample only: 0 = the committed sample_data, else a fresh draw (held out)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    config = Config.load(args.config, {"threads": args.threads})
    methods = {"all": ALL, "peers": tuple(peers.PEERS)}.get(args.methods) or tuple(args.methods.split(","))
    report = run(
        args.data,
        methods,
        args.workdir,
        args.far,
        config,
        args.seed,
        args.reuse_model,
        args.reuse_peers,
        args.peer_max_seconds,
        args.retrain,
    )
    print(markdown(report))
    if peer_notes := peers.markdown_notes(report):
        print(f"\n{peer_notes}")
    if by_kind := markdown_by_kind(report):
        print(f"\nevent recall by kind at FAR {report['far']:.0%} (windows in brackets):\n{by_kind}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
