"""demo: sample data, then fit-clusters, meta-train, backtest and evaluate on it, in one folder.

The backtest writes the events, the incidents and the HTML report into the folder too; the
summary prints the incidents, then the top events (one line each), then the evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from maml_anomaly.commands.common import command_result
from maml_anomaly.commands.evaluate import evaluate
from maml_anomaly.commands.fit_clusters import fit_clusters
from maml_anomaly.commands.meta_train import meta_train
from maml_anomaly.commands.score import backtest
from maml_anomaly.config import Config
from maml_anomaly.core.events import top_events
from maml_anomaly.data.write import write_parquet_atomic
from maml_anomaly.errors import InputError
from maml_anomaly.sample import write_sample
from maml_anomaly.store import ModelDir

log = logging.getLogger("maml_anomaly.commands")

DEMO_EVAL_DAYS = 14  # the sample's labelled evaluation period: its last 14 days

DEMO_TOP_EVENTS = 10  # events printed, most severe first
DEMO_TRAIN_BUDGET_S = 45.0  # meta-training seconds for all clusters together: the demo stays under 2 minutes


def demo(*, config: Config, workdir: Path, overwrite: bool = False) -> dict[str, Any]:
    """Make sample data in workdir and run fit-clusters, meta-train, backtest and evaluate on it.

    The model sees only the history before the evaluation period (the last 14 days); backtest
    then scores every day of that period as daily-score would have, and evaluate measures the
    flags against the sample's labelled windows.
    """
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
    log.info(
        "sample data in %s: %d series, evaluation period %s to %s",
        paths["values"].parent,
        values["unique_id"].nunique(),
        first.date(),
        last.date(),
    )

    model_dir, scores = workdir / "model", workdir / "scores.parquet"
    events, incidents, report = workdir / "events.parquet", workdir / "incidents.parquet", workdir / "report.html"
    fit_clusters(config=config, input=history, model_dir=model_dir, overwrite=overwrite)
    n_clusters = max(1, ModelDir(model_dir).load_clusters()["cluster"].nunique())
    budget = min(config.train.time_budget_s, DEMO_TRAIN_BUDGET_S / n_clusters)
    train_config = dataclasses.replace(config, train=dataclasses.replace(config.train, time_budget_s=budget))
    meta_train(config=train_config, input=history, model_dir=model_dir, overwrite=True)
    scored = backtest(
        config=config,
        input=paths["values"],
        model_dir=model_dir,
        output=scores,
        start=str(first.date()),
        end=str(last.date()),
        events=events,
        incidents=incidents,
        report=report,
    )
    result = evaluate(config=config, scores=scores, labels=paths["labels"], model_dir=model_dir)
    top = top_events(pd.read_parquet(events), DEMO_TOP_EVENTS)
    files = {
        "data": paths["values"].parent,
        "model_dir": model_dir,
        "scores": scores,
        "events": events,
        "incidents": incidents,
        "report": report,
    }
    text = "\n".join(
        [
            scored.get("summary", "").split("\n", 1)[0],  # the incidents line(s) come first
            f"top {len(top)} events by severity:" if len(top) else "top events: (none flagged)",
            *(f"  {event_line(r)}" for r in top.itertuples(index=False)),
            "",
            result["summary"],
            "",
            *(f"{name}: {path}" for name, path in files.items()),
        ]
    )
    fields = {k: v for k, v in result.items() if k != "summary"}
    return command_result(
        text,
        files=files,
        top_events=top.to_dict(orient="records"),
        top_anomalies=_top_anomalies(pd.read_parquet(scores)).to_dict(orient="records"),
        evaluation=fields,
    )


def event_line(event: Any) -> str:
    """One event: series, cluster, start..end, direction, peak score."""
    start, end = pd.Timestamp(event.start), pd.Timestamp(event.end)
    span = f"{start}" if start == end else f"{start}..{end}"
    return f"{event.unique_id!s:<10} {event.cluster!s:<12} {span:<41} {event.direction:<5} peak score {event.peak_score:.1f}"


def _top_anomalies(scores: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The n highest-scoring flagged points, the columns an operator reads first."""
    flagged = scores[scores["is_anomaly"].fillna(False).astype(bool)]
    cols = ["unique_id", "ds", "y", "y_hat", "lower", "upper", "score"]
    return flagged.nlargest(n, "score")[cols].reset_index(drop=True)
