"""The run-global alert steps of daily-score and backtest, from small summaries, then one publish.

The batches' score rows lie in part files of the run's staging folder (beside the output) and
each batch sent back its tested p-values. Here, with no score row on the driver:

1. the driver turns the p-values into each Benjamini-Hochberg group's q-value step function
   (:func:`~maml_anomaly.core.alerts.q_curves`);
2. with an alert budget, each part returns its ``max_alerts`` best candidates
   (:func:`part_candidates`) and the driver counts how many of each survive;
3. each part gets its q-values, rules, budget share and events (:func:`alert_part`) and is
   written again as output rows; its counts and events (small) come back;
4. the driver streams the alerted parts, in output order, into the output file, published
   atomically, and writes the events.

Steps 2 and 3 run where the engine runs its batches' follow-ups (:meth:`Engine.map_parts`: on
Ray's workers; one part at a time in this process locally). The results equal
:func:`~maml_anomaly.core.alerts.apply_alerts` on all rows at once (tests/test_alerts_batches.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maml_anomaly.batch import scores_table
from maml_anomaly.commands.days import with_local_span, with_local_time
from maml_anomaly.config import Config
from maml_anomaly.core.alerts import (
    AlertRules,
    Alerts,
    QCurve,
    alert_batch,
    budget_candidates,
    budget_keeps,
    merge_alerts,
    q_curves,
)
from maml_anomaly.core.events import events_schema
from maml_anomaly.data.days import UTC
from maml_anomaly.data.write import publish_parts, write_parquet_atomic
from maml_anomaly.engines import Engine
from maml_anomaly.errors import MamlAnomalyError

ALERTED = "alerted"  # the staging subfolder of the alerted parts


@dataclass(frozen=True)
class AlertTask:
    """What every part's alert step shares (small: sent to every worker)."""

    rules: AlertRules
    curves: dict[str, QCurve]
    out_dir: str  # where alerted parts are written
    keeps: dict[str, int] | None = None  # part -> how many of its budget candidates survive
    zone: str = UTC  # a zone other than UTC adds the ds_local column


@dataclass(frozen=True)
class PartAlerts:
    """What comes back of one part's alert step: its counts, its events, where its rows went."""

    counts: dict[str, Any]
    events: pd.DataFrame
    path: str


def read_part(part: str) -> tuple[pd.DataFrame, np.ndarray]:
    """A scored part's rows as the alerts step reads them, and each row's series step."""
    scores = pq.read_table(part).to_pandas()
    return scores, scores.pop("step").to_numpy()


def part_candidates(task: AlertTask, part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The part's ``max_alerts`` most significant flags after the other rules: (p, score, row)."""
    scores, step = read_part(part)
    return budget_candidates(scores, task.rules, task.curves, step=step)


def alert_part(task: AlertTask, part: str) -> PartAlerts:
    """The part's alerts (q-values, rules, its budget share, events), its rows written as output rows."""
    scores, step = read_part(part)
    keep = None if task.keeps is None else task.keeps[part]
    alerted = alert_batch(scores, task.rules, task.curves, keep=keep, step=step)
    path = Path(task.out_dir) / Path(part).name
    table = with_local_time(scores_table(alerted.scores), task.zone)
    try:
        with pq.ParquetWriter(path, table.schema, compression="none") as writer:
            writer.write_table(table)
    except OSError as exc:
        raise MamlAnomalyError(
            f"could not write a batch's alerted scores to the staging folder {task.out_dir} ({exc}). Free "
            "space in the output's folder, or choose an output on a volume with room for the run's scores. Nothing was replaced: a previous output is unchanged."
        ) from None
    return PartAlerts(alerted.counts, alerted.events, str(path))


def publish_run(
    runner: Engine,
    parts: list[str],
    tested: list[dict[str, np.ndarray]],
    config: Config,
    staging: Path,
    output: Path,
    events: Path | None,
    zone: str = UTC,
) -> Alerts:
    """Steps 1-4 above over a run's scored ``parts`` (in output order); the run's counts and events."""
    rules = config.alerts
    out_dir = staging / ALERTED
    out_dir.mkdir()
    task = AlertTask(rules, q_curves(tested), str(out_dir), zone=zone)
    if rules.max_alerts > 0:
        candidates = list(runner.map_parts(part_candidates, task, parts))
        keeps = dict(zip(parts, budget_keeps(candidates, rules.max_alerts)))
        task = AlertTask(task.rules, task.curves, task.out_dir, keeps, zone)
    done = list(runner.map_parts(alert_part, task, parts))
    id_type = pq.read_schema(parts[0]).field("unique_id").type
    merged = merge_alerts([(d.counts, d.events) for d in done], config.score.threshold, _id_dtype(id_type))
    publish_parts([d.path for d in done], output)
    if events is not None:
        schema = events_schema(pa.int64() if pa.types.is_integer(id_type) else pa.string())
        table = pa.Table.from_pandas(merged.events, schema=schema, preserve_index=False)
        write_parquet_atomic(with_local_span(table, zone), events)
    return merged


def _id_dtype(id_type: pa.DataType) -> Any:
    return "int64" if pa.types.is_integer(id_type) else object
