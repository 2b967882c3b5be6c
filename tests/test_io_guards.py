"""Inputs, outputs and exit codes for unattended runs, through the real CLI.

ERROR_CASES: outputs that would destroy an input or a model, input folders with files that are
not (yet) parquet, and hostile types; each must exit 1 with one message and leave the work folder
byte-for-byte unchanged, like the cases of test_bad_inputs.py. The @case tests: what is read from
an input folder (by content, every timezone to UTC, big integers), evaluate's label times, and how
a run ends (exit 70 for a bug, 130/143 on SIGINT/SIGTERM, one JSON object on failure).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from reliability_data import (
    ErrorCase,
    ForkRunner,
    Work,
    assert_clean_failure,
    case,
    history,
    invoke,
    snapshot,
    trained_model,
)

from maml_anomaly.commands import score as score_command
from maml_anomaly.locking import CRASH_ENV, CRASH_SIGNAL_ENV

LAST_DAY = "2024-01-10"


def _split(w: Work, name: str, first: str, second: str, later=lambda f: f, early=lambda f: f) -> Path:
    """The history as a folder of two files named ``first`` and ``second`` (each maybe changed)."""
    frame = history()
    cut = frame["ds"] >= "2024-01-06"
    folder = w.root / name
    w.parquet(early(frame[~cut]), f"{name}/{first}")
    w.parquet(later(frame[cut]), f"{name}/{second}")
    return folder


@functools.lru_cache(maxsize=1)
def _scores_file() -> Path:
    """One scores file of the tiny model (for evaluate and plot cases), made once per process."""
    root = Path(tempfile.mkdtemp(prefix="maml-io-guards-"))
    data = root / "history.parquet"
    history().to_parquet(data, index=False)
    out = root / "scores.parquet"
    result = invoke(["daily-score", "-i", data, "-m", trained_model(root / "model"), "-o", out, "-q"])
    assert result.exit_code == 0, result.output
    return out


def _scores(w: Work) -> Path:
    path = w.root / "scores-in.parquet"
    shutil.copy(_scores_file(), path)
    return path


def _labels(w: Work, frame: pd.DataFrame | pa.Table) -> Path:
    return w.parquet(frame, "labels.parquet")


# -- outputs that would destroy an input or a model -------------------------------------------------


def _output_is_input(w: Work) -> list:
    data = w.good()
    return w.score(data, w.model())[:-2] + ["-o", data]


def _output_in_model(w: Work) -> list:
    model = w.model()
    return ["daily-score", "-i", w.good(), "-m", model, "-o", model / "clusters.parquet"]


def _output_in_input_folder(w: Work) -> list:
    folder = _split(w, "recent", "a.parquet", "b.parquet")
    return ["daily-score", "-i", folder, "-m", w.model(), "-o", folder / "scores.parquet"]


def _output_in_other_model(w: Work) -> list:
    other = w.model("old-model")  # recognised by its manifest, not by being -m
    return w.backtest(w.good(), w.model())[:-2] + ["-o", other / "nested" / "scores.parquet"]


def _events_is_input(w: Work) -> list:
    data = w.good()
    return w.backtest(data, w.model(), "--events", data)


def _events_in_model(w: Work) -> list:
    model = w.model()
    return w.score(w.good(), model, "--events", model / "events.parquet")


def _plot_in_model(w: Work) -> list:
    model = w.model()
    return ["plot", "-i", w.good(), "--scores", _scores(w), "-o", model / "plots"]


def _plot_in_input_folder(w: Work) -> list:
    folder = _split(w, "recent", "a.parquet", "b.parquet")
    return ["plot", "-i", folder, "--scores", _scores(w), "-o", folder / "plots"]


def _model_in_input(w: Work) -> list:
    folder = _split(w, "history", "a.parquet", "b.parquet")
    return ["fit-clusters", "-i", folder, "-m", folder / "model"]


def _input_in_model(w: Work) -> list:
    model = w.model()
    data = w.parquet(history(), "model/history.parquet")
    return ["fit-clusters", "-i", data, "-m", model, "--overwrite"]


# -- input folders and hostile types ----------------------------------------------------------------


def _empty_file_in_folder(w: Work) -> list:
    folder = _split(w, "recent", "a.parquet", "b.parquet")
    (folder / "c.parquet").write_bytes(b"")
    return w.score(folder, w.model())


def _csv_named_parquet_in_folder(w: Work) -> list:
    folder = _split(w, "recent", "a.parquet", "b.parquet")
    (folder / "c.parquet").write_text("unique_id,ds,y\ns0,2024-01-11,1.0\n")
    return w.score(folder, w.model())


def _only_hidden_files(w: Work) -> list:
    folder = w.root / "recent"
    folder.mkdir()
    (folder / "_SUCCESS").write_bytes(b"")
    w.parquet(history(), "recent/.staging.parquet")
    return w.score(folder, w.model())


def _zero_rows_folder(w: Work) -> list:
    return w.score(_split(w, "recent", "a.parquet", "b.parquet", lambda f: f.iloc[:0], lambda f: f.iloc[:0]), w.model())


def _duplicate_columns(w: Work) -> list:
    h = history()
    table = pa.table(
        [pa.array(h["unique_id"]), pa.array(h["ds"]), pa.array(h["y"]), pa.array(h["y"])],
        names=["unique_id", "ds", "y", "y"],
    )
    return w.score(w.parquet(table), w.model())


def _struct_ids(w: Work) -> list:
    h = history()
    table = pa.table(
        {"unique_id": pa.array([{"name": i} for i in h["unique_id"]]), "ds": pa.array(h["ds"]), "y": pa.array(h["y"])}
    )
    return w.score(w.parquet(table), w.model())


def _huge_uint_ids(w: Work) -> list:
    h = history()
    ids = h["unique_id"].str[1:].astype("uint64") + np.uint64(2**63)
    table = pa.table({"unique_id": pa.array(ids, pa.uint64()), "ds": pa.array(h["ds"]), "y": pa.array(h["y"])})
    return ["fit-clusters", "-i", w.parquet(table), "-m", w.root / "m"]


def _file_lacks_a_column(w: Work) -> list:
    return w.score(_split(w, "recent", "a.parquet", "b.parquet", later=lambda f: f.drop(columns="y")), w.model())


def _fifo_input(w: Work) -> list:
    fifo = w.root / "input.pipe"
    os.mkfifo(fifo)
    return w.score(fifo, w.model())


def _labels_reversed_window(w: Work) -> list:
    at = pd.Timestamp(f"{LAST_DAY} 09:00")
    labels = _labels(w, pd.DataFrame({"unique_id": ["s0"], "start": [at], "end": [at - pd.Timedelta(hours=4)]}))
    return ["evaluate", "--scores", _scores(w), "--labels", labels]


def _scores_of_another_type(w: Work) -> list:
    scores = pd.read_parquet(_scores_file())
    edited = w.parquet(scores.assign(is_anomaly=scores["is_anomaly"].map({True: "yes", False: "no"})), "edited.parquet")
    return ["evaluate", "--scores", edited, "--labels", _labels(w, scores.loc[:0, ["unique_id", "ds"]])]


def _labels_null_ids(w: Work) -> list:
    labels = _labels(w, pd.DataFrame({"unique_id": ["s0", None], "ds": pd.to_datetime([f"{LAST_DAY} 05:00"] * 2)}))
    return ["evaluate", "--scores", _scores(w), "--labels", labels]


def _labels_not_times(w: Work) -> list:
    labels = _labels(w, pd.DataFrame({"unique_id": ["s0", "s1"], "ds": [f"{LAST_DAY} 05:00", "soon"]}))
    return ["evaluate", "--scores", _scores(w), "--labels", labels]


def _labels_integer_times(w: Work) -> list:
    labels = _labels(w, pd.DataFrame({"unique_id": ["s0"], "start": [5], "end": [9]}))
    return ["evaluate", "--scores", _scores(w), "--labels", labels]


ERROR_CASES = [
    ErrorCase("output-is-the-input", _output_is_input, ("--output", "is the input file")),
    ErrorCase("output-inside-the-model-directory", _output_in_model, ("--output", "inside the model directory")),
    ErrorCase(
        "output-inside-the-input-folder", _output_in_input_folder, ("--output", "inside the input folder", "duplicate")
    ),
    ErrorCase(
        "output-inside-another-model-directory", _output_in_other_model, ("inside the model directory", "old-model")
    ),
    ErrorCase("events-is-the-input", _events_is_input, ("--events", "is the input file")),
    ErrorCase("events-inside-the-model-directory", _events_in_model, ("--events", "inside the model directory")),
    ErrorCase("plot-inside-the-model-directory", _plot_in_model, ("--output", "inside the model directory")),
    ErrorCase("plot-inside-the-input-folder", _plot_in_input_folder, ("--output", "inside the input folder")),
    ErrorCase("model-dir-inside-the-input-folder", _model_in_input, ("--model-dir", "inside the input folder")),
    ErrorCase("input-inside-the-model-directory", _input_in_model, ("--input", "inside the model directory")),
    ErrorCase("empty-file-in-input-folder", _empty_file_in_folder, ("c.parquet", "is empty")),
    ErrorCase(
        "csv-named-parquet-in-input-folder", _csv_named_parquet_in_folder, ("c.parquet", "content is not parquet")
    ),
    ErrorCase("input-folder-of-hidden-files", _only_hidden_files, ("no parquet files", "_SUCCESS", ".staging.parquet")),
    ErrorCase("input-folder-of-zero-row-files", _zero_rows_folder, ("no rows",)),
    ErrorCase("duplicate-column-names", _duplicate_columns, ("'y'", "more than once")),
    ErrorCase("nested-id-type", _struct_ids, ("'unique_id'", "struct", "strings or integers")),
    ErrorCase("uint64-ids-beyond-int64", _huge_uint_ids, ("'unique_id'", "int64", "strings")),
    ErrorCase(
        "file-lacking-a-column-in-input-folder", _file_lacks_a_column, ("'y'", "missing from 1 file", "b.parquet")
    ),
    ErrorCase(
        "input-neither-file-nor-directory", _fifo_input, ("input.pipe", "neither a regular file nor a directory")
    ),
    ErrorCase("labels-window-ends-before-start", _labels_reversed_window, ("--labels", "end before they start")),
    ErrorCase("scores-column-of-another-type", _scores_of_another_type, ("--scores", "'is_anomaly'", "expected bool")),
    ErrorCase("labels-null-ids", _labels_null_ids, ("--labels", "1 label rows without a unique_id")),
    ErrorCase("labels-times-not-timestamps", _labels_not_times, ("--labels", "'ds'", "'soon'")),
    ErrorCase("labels-integer-times", _labels_integer_times, ("--labels", "'start'", "int64")),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c.id for c in ERROR_CASES])
def test_io_error_case_exits_1_with_a_message_and_writes_nothing(case, tmp_path):
    w = Work(tmp_path)
    args = case.build(w)
    before = snapshot(tmp_path)
    result = invoke(args)
    assert_clean_failure(result, *case.words)
    assert snapshot(tmp_path) == before  # nothing written, changed or left behind (locks, temps)


# -- what an input folder gives -----------------------------------------------------------------------


def _score_frame(w: Work, inp: Path, *extra) -> tuple[object, pd.DataFrame]:
    model = w.root / "model"
    if not model.exists():
        w.model()
    out = w.root / f"scores-{len(list(w.root.glob('scores-*.parquet')))}.parquet"
    result = invoke(["daily-score", "-i", inp, "-m", model, "-o", out, *extra])
    assert result.exit_code == 0, result.output
    return result, pd.read_parquet(out).sort_values(["unique_id", "ds"], ignore_index=True)


@case("files-without-a-parquet-suffix")
def test_status_files_are_read_by_content_and_skipped_ones_are_named(tmp_path):
    w = Work(tmp_path)
    folder = _split(w, "spark", "part-00000", "b.PARQUET")
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / ".part-00000.crc").write_bytes(b"\x00\x01")
    (folder / "README.txt").write_text("exported nightly")
    result, scores = _score_frame(w, folder)
    _, expected = _score_frame(w, w.good())
    pd.testing.assert_frame_equal(scores, expected)  # every series of both files, none vanished
    assert "_SUCCESS" in result.stderr and ".part-00000.crc" in result.stderr
    assert "README.txt" in result.stderr and "not parquet" in result.stderr


@case("files-in-different-timezones")
def test_status_files_in_different_timezones_are_each_converted_to_utc(tmp_path):
    w = Work(tmp_path)
    folder = _split(
        w,
        "zones",
        "a.parquet",
        "b.parquet",
        later=lambda f: f.assign(ds=f["ds"].dt.tz_localize("UTC").dt.tz_convert("Asia/Tokyo")),
        early=lambda f: f.assign(ds=f["ds"].dt.tz_localize("UTC")),
    )
    _, scores = _score_frame(w, folder)
    _, expected = _score_frame(w, w.good())
    pd.testing.assert_frame_equal(scores, expected)  # the same instants: the same day, the same scores
    result = invoke(["fit-clusters", "-i", folder, "-m", w.root / "refit", "-q"])  # the whole-input reader too
    assert result.exit_code == 0, result.output


@case("integers-beyond-2^53")
@pytest.mark.parametrize("arrow_type", [pa.int64(), pa.uint64()], ids=["int64", "uint64"])
def test_status_integers_beyond_2_53_become_float64_with_a_warning(tmp_path, arrow_type):
    w = Work(tmp_path)
    h = history()
    counts = (h["y"] * 1000).round().astype("int64") + 2**60  # counters far beyond 2^53
    data = w.parquet(
        pa.table({"unique_id": pa.array(h["unique_id"]), "ds": pa.array(h["ds"]), "y": pa.array(counts, arrow_type)})
    )
    result, scores = _score_frame(w, data)
    assert "beyond 2^53" in result.stderr and "float64" in result.stderr
    assert len(scores) == 8 * 24 and scores["y"].dtype == np.float64
    np.testing.assert_allclose(
        scores["y"].to_numpy(), counts[h["ds"] >= LAST_DAY].to_numpy(dtype=np.float64), rtol=1e-15
    )


@case("labels-timezone-aware")
@pytest.mark.parametrize("kind", ["points", "windows"])
def test_status_timezone_aware_labels_are_read_in_utc(tmp_path, kind):
    w = Work(tmp_path)
    scores = _scores(w)
    at = pd.to_datetime([f"{LAST_DAY} 05:00", f"{LAST_DAY} 13:00"])
    naive = pd.DataFrame({"unique_id": ["s0", "s3"], "ds": at})
    if kind == "windows":
        naive = pd.DataFrame({"unique_id": ["s0", "s3"], "start": at, "end": at + pd.Timedelta(hours=2)})
    aware = naive.apply(lambda c: c.dt.tz_localize("UTC").dt.tz_convert("Asia/Tokyo") if c.name != "unique_id" else c)
    results = []
    for name, frame in (("naive", naive), ("aware", aware)):
        result = invoke(
            ["evaluate", "--scores", scores, "--labels", w.parquet(frame, f"{name}.parquet"), "--json", "-q"]
        )
        assert result.exit_code == 0, result.output
        results.append(json.loads(result.stdout))
    assert results[0] == results[1]
    assert results[0]["labels"] == kind


# -- how a run ends -----------------------------------------------------------------------------------


@case("bug-exits-70")
def test_status_an_unexpected_exception_exits_70_with_its_traceback_and_a_json_line(tmp_path, monkeypatch):
    w = Work(tmp_path)

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(score_command, "score_days", broken)
    args = w.score(w.good(), w.model(), "--json")
    result = invoke(args)
    assert result.exit_code == 70
    assert "Traceback (most recent call last)" in result.stderr and "KeyError: 'a bug'" in result.stderr
    (line,) = result.stdout.splitlines()
    record = json.loads(line)
    assert record["exit_code"] == 70 and record["command"] == "daily-score" and "KeyError" in record["error"]
    monkeypatch.undo()
    assert invoke(w.score(w.good(), w.root / "model", "-q")).exit_code == 0  # the input was fine


@case("failure-json-line")
def test_status_a_failed_run_prints_one_json_object_with_json(tmp_path):
    w = Work(tmp_path)
    result = invoke(w.score(w.root / "nope.parquet", w.model(), "--json"))
    assert result.exit_code == 1
    (line,) = result.stdout.splitlines()
    record = json.loads(line)
    assert record == {"error": record["error"], "exit_code": 1, "command": "daily-score"}
    assert "does not exist" in record["error"] and record["error"] in result.stderr


@case("usage-error-json-line")
def test_status_a_usage_error_prints_one_json_object_with_json(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "maml_anomaly", "daily-score", "--no-such-option", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert json.loads(line)["exit_code"] == 2 and json.loads(line)["command"] == "daily-score"


@pytest.fixture(scope="module")
def fork(tmp_path_factory):
    runner = ForkRunner(tmp_path_factory.mktemp("fork"))
    yield runner
    runner.close()


def _signalled(fork: ForkRunner, args: list, moment: str, sig: str) -> tuple[int | None, str]:
    """Run in a separate process that sends itself SIG``sig`` at ``moment``: (exit code, log)."""
    died, code, log = fork.run(args, {CRASH_ENV: moment, CRASH_SIGNAL_ENV: sig})
    assert died == 0, (died, log[-2000:])  # handled: the process exits, it is not killed
    return code, log


# (moment, signal, exit code, what the line says)
SIGNAL_MOMENTS = [
    ("locked", "TERM", 143, "no output written"),
    ("parquet:tmp-written", "INT", 130, "no output written"),
    ("parquet:after-rename", "TERM", 143, "written completely before the interruption"),
]


@case("sigint-sigterm-daily-score")
@pytest.mark.parametrize("moment,sig,code,says", SIGNAL_MOMENTS, ids=[f"{m[1]}-{m[0]}" for m in SIGNAL_MOMENTS])
def test_status_a_signal_ends_daily_score_with_one_line_and_128_plus_signal(fork, tmp_path, moment, sig, code, says):
    w = Work(tmp_path)
    data, model = w.good(), w.model()
    previous = w.parquet(history(seed=1), "yesterday.parquet")
    assert invoke(w.score(previous, model, "-q")).exit_code == 0  # a previous scores file, other than the new one
    before = snapshot(tmp_path)
    exit_code, log = _signalled(fork, [*w.score(data, model), "--json"], moment, sig)
    assert exit_code == code, log[-2000:]
    line = next(t for t in log.splitlines() if t.startswith("Error: interrupted"))
    assert f"SIG{sig}" in line and says in line and "the model directory is unchanged" in line
    assert json.loads(next(t for t in log.splitlines() if t.startswith("{")))["exit_code"] == code
    assert "Traceback" not in log
    after = snapshot(tmp_path)
    assert not [p for p in after if p.endswith(".tmp") or p.endswith(".lock")]  # cleaned up on the way out
    changed = {p for p in after if before.get(p) != after[p]}
    assert changed == (set() if "no output" in says else {"scores.parquet"})


@case("sigterm-meta-train")
def test_status_sigterm_during_meta_train_says_what_the_model_directory_holds(fork, tmp_path):
    w = Work(tmp_path)
    data, model = w.good(), w.model()
    before = snapshot(model)
    args = ["meta-train", "-i", data, "-m", model, "--overwrite", "--iterations", "2", "--k-shot", "8"]
    exit_code, log = _signalled(fork, args, "locked", "TERM")
    assert exit_code == 143 and "interrupted by SIGTERM" in log and "the model directory is unchanged" in log
    assert snapshot(model) == before
    exit_code, log = _signalled(fork, args, "bytes:after-rename", "TERM")
    assert exit_code == 143 and f"the model directory {model} was changed before the interruption" in log
