"""Crash safety and reruns: a kill at any moment leaves the old scores or the complete new ones.

daily-score runs in a separate process (forked from one that imported the package, to skip
the import cost) that SIGKILLs itself at a named moment of its write path
(``MAML_ANOMALY_CRASH_AT``, see maml_anomaly.locking.crash_point): no timing luck involved.
The scores file it was replacing must then be a readable parquet whose checksum is the old
file's or the new complete one's, and the next run must clean up and succeed.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pandas as pd
import pytest
from reliability_data import TRAIN_ARGS, ForkRunner, history, invoke, sha256, snapshot, trained_model

from maml_anomaly.locking import CRASH_ENV, lock_path, read_holder

# (moment, what the scores path must hold after the kill, whether a temp file is left behind)
MOMENTS = [
    ("locked", "old", False),  # locks taken, nothing read yet
    ("parquet:tmp-created", "old", True),  # empty temp file beside the output
    ("parquet:partial", "old", True),  # temp file holds part of the parquet, no footer
    ("parquet:tmp-written", "old", True),  # temp file complete, not yet fsynced
    ("parquet:before-rename", "old", True),  # temp file fsynced, not yet renamed
    ("parquet:after-rename", "new", False),  # renamed, folder not yet fsynced, locks still held
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A model, an old and a new input, and the old and new complete scores (bytes)."""
    root = tmp_path_factory.mktemp("crash")
    model = trained_model(root / "model")
    old_in, new_in = root / "old.parquet", root / "new.parquet"
    history(seed=1).to_parquet(old_in, index=False)
    history(seed=0).to_parquet(new_in, index=False)
    expected = {}
    for name, inp in (("old", old_in), ("new", new_in)):
        out = root / f"{name}-scores.parquet"
        result = invoke(["daily-score", "-i", inp, "-m", model, "-o", out, "-q"])
        assert result.exit_code == 0, result.output
        expected[name] = out
    assert sha256(expected["old"]) != sha256(expected["new"])
    return {"model": model, "new_in": new_in, **expected}


@pytest.fixture(scope="module")
def fork(tmp_path_factory):
    runner = ForkRunner(tmp_path_factory.mktemp("fork"))
    yield runner
    runner.close()


def _killed(fork: ForkRunner, args: list, moment: str) -> str:
    """Run in a separate process that SIGKILLs itself at ``moment``; its log."""
    sig, code, log = fork.run(args, {CRASH_ENV: moment})
    assert sig == signal.SIGKILL, (sig, code, log[-2000:])
    return log


def _temps(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.*.tmp"))


@pytest.mark.parametrize("moment,holds,temp_left", MOMENTS, ids=[m[0] for m in MOMENTS])
def test_kill_while_replacing_scores_leaves_old_or_new_then_rerun_succeeds(
    setup, fork, tmp_path, moment, holds, temp_left
):
    out = tmp_path / "scores.parquet"
    shutil.copyfile(setup["old"], out)
    args = ["daily-score", "-i", setup["new_in"], "-m", setup["model"], "-o", out]

    _killed(fork, args, moment)

    # the scores path holds one complete file: the old one, or the new one
    frame = pd.read_parquet(out)
    assert sha256(out) == sha256(setup[holds])
    assert len(frame) == len(pd.read_parquet(setup[holds]))
    assert bool(_temps(out)) == temp_left  # the killed run's leftover, if it had one
    holder = read_holder(lock_path(out))  # the dead run's lock, still naming it
    assert holder is not None and holder.pid not in (os.getpid(), None)

    # the next run takes the stale lock over, removes the leftovers and writes the new scores
    rerun = invoke(args)
    assert rerun.exit_code == 0, rerun.output
    assert "took over the lock" in rerun.stderr and str(holder.pid) in rerun.stderr
    assert sha256(out) == sha256(setup["new"])
    assert not _temps(out) and not lock_path(out).exists() and not lock_path(setup["model"]).exists()


def test_kill_during_meta_train_leaves_a_directory_a_rerun_can_replace(fork, tmp_path):
    """Killed while writing its first weights file, meta-train leaves the previous version serving
    (daily-score scores as before) and meta-train --overwrite replaces it."""
    model = trained_model(tmp_path / "model")
    data = tmp_path / "history.parquet"
    history().to_parquet(data, index=False)
    before = invoke(["daily-score", "-i", data, "-m", model, "-o", tmp_path / "before.parquet", "-q"])
    assert before.exit_code == 0, before.output
    args = ["meta-train", "-i", data, "-m", model, "--overwrite", *TRAIN_ARGS, "-q"]
    _killed(fork, args, "bytes:before-rename")
    scored = invoke(["daily-score", "-i", data, "-m", model, "-o", tmp_path / "s.parquet"])
    assert scored.exit_code == 0, scored.output
    assert sha256(tmp_path / "s.parquet") == sha256(tmp_path / "before.parquet")
    rerun = invoke(args)
    assert rerun.exit_code == 0, rerun.output
    assert not list(model.glob(".*.tmp")) and not lock_path(model).exists()
    scored = invoke(["daily-score", "-i", data, "-m", model, "-o", tmp_path / "s.parquet"])
    assert scored.exit_code == 0, scored.output


# -- reruns ------------------------------------------------------------------------------------------


def test_same_daily_score_twice_is_byte_identical(setup, tmp_path):
    out = tmp_path / "scores.parquet"
    args = ["daily-score", "-i", setup["new_in"], "-m", setup["model"], "-o", out, "-q"]
    assert invoke(args).exit_code == 0
    first = sha256(out)
    assert invoke(args).exit_code == 0
    assert sha256(out) == first == sha256(setup["new"])  # and the same as another run's output


def test_same_backtest_twice_is_byte_identical(setup, tmp_path):
    out = tmp_path / "scores.parquet"
    args = ["backtest", "-i", setup["new_in"], "-m", setup["model"], "-o", out, "--start", "2024-01-08", "-q"]
    assert invoke(args).exit_code == 0
    first = sha256(out)
    assert invoke(args).exit_code == 0
    assert sha256(out) == first


def test_rerun_after_a_failure_succeeds_and_the_failure_changed_nothing(setup, tmp_path):
    out = tmp_path / "scores.parquet"
    shutil.copyfile(setup["old"], out)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(setup["new_in"].read_bytes()[:500])  # truncated: a file still being copied
    before = snapshot(tmp_path)
    failed = invoke(["daily-score", "-i", bad, "-m", setup["model"], "-o", out])
    assert failed.exit_code == 1 and snapshot(tmp_path) == before
    shutil.copyfile(setup["new_in"], bad)  # the upstream job finished
    assert invoke(["daily-score", "-i", bad, "-m", setup["model"], "-o", out, "-q"]).exit_code == 0
    assert sha256(out) == sha256(setup["new"])


def test_output_files_get_the_usual_mode_not_0600(setup, tmp_path):
    out = tmp_path / "scores.parquet"
    old = os.umask(0o022)
    try:
        assert invoke(["daily-score", "-i", setup["new_in"], "-m", setup["model"], "-o", out, "-q"]).exit_code == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


def test_temp_files_of_live_writers_are_never_removed(tmp_path):
    from maml_anomaly.data.write import clean_stale_temps, write_parquet_atomic

    out = tmp_path / "scores.parquet"
    live = tmp_path / f".scores.parquet.{os.getpid()}.abc123.tmp"  # ours: alive
    dead = tmp_path / ".scores.parquet.999999999.abc123.tmp"  # no such pid
    other = tmp_path / ".other.parquet.999999999.abc123.tmp"  # another output's
    for p in (live, dead, other):
        p.write_bytes(b"partial")
    assert clean_stale_temps(out) == 1
    assert live.exists() and not dead.exists() and other.exists()
    write_parquet_atomic(history().head(3), out)
    assert live.exists() and len(pd.read_parquet(out)) == 3
