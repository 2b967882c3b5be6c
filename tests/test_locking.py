"""Locks: a second run on the same model directory or output waits (bounded) or stops clearly;
a lock left by a killed process is taken over; no lock file outlives a clean run.

Other holders are real processes (a tiny helper that only imports maml_anomaly.locking), and
every wait is on an event (a line printed, a log record), never on a sleep of lucky length.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from reliability_data import ForkRunner, history, invoke, sha256, snapshot, trained_model

from maml_anomaly.errors import MamlAnomalyError
from maml_anomaly.locking import FileLock, LockBusyError, command_locks, lock_path, read_holder

ROOT = Path(__file__).resolve().parents[1]

_HOLDER = r"""
import sys
from maml_anomaly.errors import MamlAnomalyError
from maml_anomaly.locking import FileLock
lock = FileLock(sys.argv[1], shared=sys.argv[2] == "shared", what="test", command="test-holder")
lock.acquire()
print("held", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
"""


class Holder:
    """Another process holding a lock on ``target`` until released (or killed)."""

    def __init__(self, target: Path, shared: bool = False) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(target), "shared" if shared else "exclusive"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout.readline().strip() == "held"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def release(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"
        self.proc.wait(timeout=60)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.kill()


class _Seen(logging.Handler):
    """Sets an event when a log record containing ``text`` is emitted."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.event = text, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


# -- the lock itself ---------------------------------------------------------------------------------


def test_lock_file_records_pid_host_start_and_command_and_is_removed_on_release(tmp_path):
    target = tmp_path / "scores.parquet"
    with FileLock(target, command="daily-score"):
        data = json.loads(lock_path(target).read_text())
        assert data["pid"] == os.getpid() and data["host"] == socket.gethostname()
        assert data["command"] == "daily-score" and data["started_at"].endswith("+00:00")
    assert not lock_path(target).exists()
    assert lock_path(target) == tmp_path / ".scores.parquet.lock"


def test_second_holder_stops_at_once_with_a_message_naming_the_holder(tmp_path):
    target = tmp_path / "model"
    with Holder(target) as holder:
        with pytest.raises(LockBusyError) as err:
            FileLock(target, what="model directory").acquire()
    message = str(err.value)
    for words in (
        f"pid {holder.pid}",
        socket.gethostname(),
        "test-holder",
        "started",
        "--lock-timeout",
        str(lock_path(target)),
    ):
        assert words in message, (words, message)


def test_second_holder_stops_after_its_timeout(tmp_path):
    target = tmp_path / "scores.parquet"
    with Holder(target):
        with pytest.raises(LockBusyError, match="after waiting 0.2 s"):
            FileLock(target, timeout=0.2).acquire()


def test_waiter_gets_the_lock_once_the_holder_releases_it(tmp_path):
    target = tmp_path / "scores.parquet"
    seen = _Seen("waiting up to")
    logging.getLogger("maml_anomaly.locking").addHandler(seen)
    got = threading.Event()
    lock = FileLock(target, timeout=120)
    try:
        with Holder(target) as holder:
            waiter = threading.Thread(target=lambda: (lock.acquire(), got.set()))
            waiter.start()
            assert seen.event.wait(60)  # it is waiting now
            assert not got.is_set()
            holder.release()
            waiter.join(120)
        assert got.is_set() and lock.held
        assert read_holder(lock_path(target)).pid == os.getpid()
    finally:
        lock.release()
        logging.getLogger("maml_anomaly.locking").removeHandler(seen)


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    target = tmp_path / "model"
    holder = Holder(target)
    holder.kill()
    assert read_holder(lock_path(target)).pid == holder.pid  # left behind, naming the dead holder
    with caplog.at_level(logging.WARNING, logger="maml_anomaly.locking"):
        with FileLock(target, what="model directory"):
            assert read_holder(lock_path(target)).pid == os.getpid()
    assert f"pid {holder.pid}" in caplog.text and "no longer running" in caplog.text
    assert not lock_path(target).exists()


def test_shared_holders_coexist_and_exclude_a_writer(tmp_path):
    target = tmp_path / "model"
    with Holder(target, shared=True):
        with FileLock(target, shared=True):  # a second reader is fine
            pass
        with pytest.raises(LockBusyError, match="reading it"):
            FileLock(target, what="model directory").acquire()
        assert lock_path(target).exists()  # the other reader still holds it
    with FileLock(target):  # both readers gone: a writer gets it
        pass
    assert not lock_path(target).exists()


def test_command_locks_take_model_then_output(tmp_path):
    with command_locks(model_dir=tmp_path / "m", model_shared=True, output=tmp_path / "s.parquet"):
        assert lock_path(tmp_path / "m").exists() and read_holder(lock_path(tmp_path / "s.parquet"))
    assert not list(tmp_path.glob(".*.lock"))


# -- through the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def scored(tmp_path):
    model = trained_model(tmp_path / "model")
    data = tmp_path / "history.parquet"
    history().to_parquet(data, index=False)
    return model, data, tmp_path / "scores.parquet"


def test_daily_score_stops_while_meta_train_holds_the_model_directory(scored, tmp_path):
    model, data, out = scored
    with Holder(model) as holder:
        before = snapshot(tmp_path)
        result = invoke(["daily-score", "-i", data, "-m", model, "-o", out])
        after = snapshot(tmp_path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"pid {holder.pid}" in result.stderr and "--lock-timeout" in result.stderr
    assert after == before and not out.exists()


def test_two_daily_scores_on_one_output_the_second_stops(scored):
    model, data, out = scored
    with Holder(out) as holder:
        result = invoke(["daily-score", "-i", data, "-m", model, "-o", out])
    assert result.exit_code == 1 and f"pid {holder.pid}" in result.stderr and "output" in result.stderr
    assert not out.exists()


def test_fit_clusters_stops_while_daily_score_reads_the_model(scored):
    model, data, _ = scored
    with Holder(model, shared=True):
        result = invoke(["fit-clusters", "-i", data, "-m", model, "--overwrite"])
    assert result.exit_code == 1 and "reading it" in result.stderr
    again = trained_model(model.parent / "again")
    assert sha256(model / "current" / "clusters.parquet") == sha256(again / "current" / "clusters.parquet")


def test_two_daily_scores_on_one_model_with_different_outputs_both_run(scored, tmp_path):
    model, data, out = scored
    with Holder(model, shared=True):  # another daily-score reading the same model
        result = invoke(["daily-score", "-i", data, "-m", model, "-o", out, "-q"])
    assert result.exit_code == 0, result.output


def test_daily_score_waits_with_lock_timeout_and_then_succeeds(scored, tmp_path):
    """The holder is this test process; daily-score runs in another process and waits for it."""
    model, data, out = scored
    fork = ForkRunner(tmp_path)
    lock = FileLock(out, command="test")
    lock.acquire()
    try:
        job = fork.start(["daily-score", "-i", data, "-m", model, "-o", out, "--lock-timeout", "300"])
        assert fork.wait_for_log(job, "waiting up to", timeout=120)
        assert not out.exists()
    finally:
        lock.release()
    sig, code, log = fork.finish(job)
    fork.close()
    assert (sig, code) == (0, 0), log
    assert out.exists() and "scored" in log


def test_a_reader_of_a_read_only_model_directory_goes_on_without_a_lock(tmp_path, monkeypatch, caplog):
    def read_only(self):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(FileLock, "_try_once", read_only)
    with caplog.at_level(logging.WARNING, logger="maml_anomaly.locking"):
        with command_locks(model_dir=tmp_path / "m", model_shared=True):
            pass
    assert "without a lock" in caplog.text
    with pytest.raises(MamlAnomalyError, match="Read-only"):
        FileLock(tmp_path / "m").acquire()  # a writer does not go on
