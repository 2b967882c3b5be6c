"""The staging folder beside the output: removed after a failed run, and after a killed one by the next run."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
from reliability_data import Work, assert_clean_failure, case, history, invoke, snapshot


def _dead_pid() -> int:
    """The pid of a process that has exited (reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@case("staging-left-by-a-killed-run")
def test_status_a_killed_runs_staging_folder_is_removed_by_the_next_run(tmp_path):
    work = Work(tmp_path)
    inp, model = work.good(), work.model()
    dead = tmp_path / f".{work.out.name}.{_dead_pid()}.abc123.staging"
    live = tmp_path / f".{work.out.name}.1.def456.staging"  # pid 1 runs: another writer's folder
    for folder in (dead, live):
        (folder / "scored").mkdir(parents=True)
        (folder / "scored" / "part-0.parquet").write_bytes(b"left behind")
    result = invoke(work.score(inp, model, "-q"))
    assert result.exit_code == 0, result.output
    assert not dead.exists() and live.exists()
    assert [p.name for p in tmp_path.glob(f".{work.out.name}.*.staging")] == [live.name]
    frame, scores = history(), pd.read_parquet(work.out)
    last_day = frame["ds"].dt.normalize() == frame["ds"].max().normalize()
    assert len(scores) == last_day.sum() > 0  # every row of the scored day


@case("staging-removed-after-a-failure")
def test_status_a_run_that_fails_while_scoring_leaves_no_staging_folder(tmp_path):
    work = Work(tmp_path)
    frame = history()
    inp = work.parquet(pd.concat([frame, frame.iloc[:2]], ignore_index=True))  # duplicates: found while reading batches
    model = work.model()
    before = snapshot(tmp_path)
    result = invoke(work.score(inp, model))
    assert_clean_failure(result, "duplicate")
    assert snapshot(tmp_path) == before and not list(tmp_path.glob(".*.staging"))
