"""The command line: help everywhere, exit codes, clear errors without tracebacks, nothing written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from maml_anomaly.cli import app
from maml_anomaly.commands import common, fit_clusters, meta_train
from maml_anomaly.config import Config
from maml_anomaly.model_versions import PENDING
from maml_anomaly.store import ModelDir

COMMANDS = {
    "fit-clusters": [
        "--input",
        "--model-dir",
        "--id-col",
        "--time-col",
        "--value-col",
        "--config",
        "--device",
        "--threads",
        "--quiet",
        "--verbose",
        "--json",
        "--on-duplicate",
        "--overwrite",
    ],
    "meta-train": [
        "--input",
        "--model-dir",
        "--k-shot",
        "--inner-steps",
        "--inner-lr",
        "--meta-batch-size",
        "--meta-lr",
        "--iterations",
        "--first-order",
        "--second-order",
        "--seed",
        "--time-budget",
        "--overwrite",
        "--config",
    ],
    "daily-score": [
        "--input",
        "--model-dir",
        "--output",
        "--date",
        "--threshold",
        "--max-failed-fraction",
        "--on-duplicate",
        "--json",
    ],
    "backtest": ["--input", "--model-dir", "--output", "--start", "--end"],
    "evaluate": ["--scores", "--labels", "--json"],
    "demo": ["--workdir", "--overwrite"],
    "plot": ["--input", "--scores", "--series", "--output", "--top"],
    "bench sine": [
        "--k-shot",
        "--iterations",
        "--seed",
        "--first-order",
        "--learn-inner-lr",
        "--no-learn-inner-lr",
        "--eval-tasks",
        "--json",
    ],
    "bench scale": ["--series", "--freq", "--device", "--json"],
}


def _invoke(runner, args):
    return runner.invoke(
        app,
        [str(a) for a in args],
        prog_name="maml-anomaly",
        color=False,
        env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"},
    )


def test_top_level_help_lists_every_command(runner):
    result = _invoke(runner, ["--help"])
    assert result.exit_code == 0
    for command in ["fit-clusters", "meta-train", "daily-score", "backtest", "evaluate", "demo", "plot", "bench"]:
        assert command in result.stdout


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help_with_its_options(runner, command):
    result = _invoke(runner, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    for option in COMMANDS[command]:
        assert option in result.stdout, option


def test_version(runner):
    result = _invoke(runner, ["--version"])
    assert result.exit_code == 0 and "maml-anomaly" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["fit-clusters", "--model-dir", "m"],  # missing --input
        ["fit-clusters", "--input", "x", "--model-dir", "m", "--device", "tpu"],
        ["meta-train", "--input", "x", "--model-dir", "m", "--k-shot", "0"],
        ["daily-score", "--input", "x", "--model-dir", "m", "--output", "o", "--max-failed-fraction", "2"],
        ["nonsense"],
    ],
)
def test_usage_errors_exit_2(runner, args):
    assert _invoke(runner, args).exit_code == 2


# -- bad inputs: exit 1, a message, no traceback, nothing written -------------------------------


def _bad_inputs(tmp_path: Path, good: pd.DataFrame) -> dict[str, tuple[Path, str]]:
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing path"] = (tmp_path / "nope.parquet", "does not exist")
    text = tmp_path / "text.parquet"
    text.write_text("unique_id,ds,y\n")
    cases["not parquet"] = (text, "could not read")
    whole = tmp_path / "whole.parquet"
    good.to_parquet(whole, index=False)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(whole.read_bytes()[:300])
    cases["truncated"] = (cut, "truncated")
    renamed = tmp_path / "renamed.parquet"
    good.rename(columns={"ds": "timestamp"}).to_parquet(renamed, index=False)
    cases["missing column"] = (renamed, "--time-col")
    text_y = tmp_path / "text_y.parquet"
    good.assign(y="n/a").to_parquet(text_y, index=False)
    cases["non-numeric"] = (text_y, "numeric")
    bad_ts = tmp_path / "bad_ts.parquet"
    good.assign(ds="not a date").to_parquet(bad_ts, index=False)
    cases["unparseable timestamps"] = (bad_ts, "ISO 8601")
    empty = tmp_path / "empty.parquet"
    good.iloc[:0].to_parquet(empty, index=False)
    cases["empty"] = (empty, "no rows")
    dup = tmp_path / "dup.parquet"
    pd.concat([good, good.iloc[:2]]).to_parquet(dup, index=False)
    cases["duplicates"] = (dup, "--on-duplicate")
    return cases


def _assert_clean_failure(result, words: str):
    assert result.exit_code == 1, result.output
    assert words in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


@pytest.mark.parametrize(
    "case",
    [
        "missing path",
        "not parquet",
        "truncated",
        "missing column",
        "non-numeric",
        "unparseable timestamps",
        "empty",
        "duplicates",
    ],
)
def test_bad_input_fit_clusters(runner, tmp_path, long_frame, case):
    path, words = _bad_inputs(tmp_path, long_frame)[case]
    result = _invoke(runner, ["fit-clusters", "--input", path, "--model-dir", tmp_path / "model"])
    _assert_clean_failure(result, words)
    assert not (tmp_path / "model").exists()


def _model_dir(path: Path) -> Path:
    md = ModelDir(path)
    md.prepare(overwrite=False)
    md.save_clusters(pd.DataFrame({"unique_id": ["s0", "s1", "s2"], "cluster": ["0"] * 3, "period": [24] * 3}))
    md.write_manifest(Config(), Config().columns, {"start": "2024-01-01", "end": "2024-01-02"})
    md.publish(PENDING)
    return path


@pytest.mark.parametrize("case", ["missing path", "truncated", "missing column", "duplicates"])
def test_bad_input_daily_score_writes_nothing(runner, tmp_path, long_frame, case):
    path, words = _bad_inputs(tmp_path, long_frame)[case]
    model = _model_dir(tmp_path / "model")
    out = tmp_path / "scores.parquet"
    result = _invoke(runner, ["daily-score", "--input", path, "--model-dir", model, "--output", out])
    _assert_clean_failure(result, words)
    assert not out.exists()


def test_daily_score_date_without_data(runner, tmp_path, long_parquet):
    model = _model_dir(tmp_path / "model")
    out = tmp_path / "scores.parquet"
    result = _invoke(runner, ["daily-score", "-i", long_parquet, "-m", model, "-o", out, "--date", "2030-01-01"])
    _assert_clean_failure(result, "no data on 2030-01-01")
    result = _invoke(runner, ["daily-score", "-i", long_parquet, "-m", model, "-o", out, "--date", "01/02/2024"])
    _assert_clean_failure(result, "YYYY-MM-DD")
    assert not out.exists()


@pytest.mark.parametrize(
    "state, words", [("missing", "does not exist"), ("empty", "is empty"), ("version", "format version")]
)
def test_daily_score_bad_model_dir(runner, tmp_path, long_parquet, state, words):
    model = tmp_path / "model"
    if state == "empty":
        model.mkdir()
    if state == "version":
        _model_dir(model)
        manifest = json.loads((model / "pending" / "manifest.json").read_text())
        manifest["format_version"] = 99
        (model / "pending" / "manifest.json").write_text(json.dumps(manifest))
    result = _invoke(runner, ["daily-score", "-i", long_parquet, "-m", model, "-o", tmp_path / "s.parquet"])
    _assert_clean_failure(result, words)


def test_fit_clusters_refuses_to_overwrite_a_model(runner, tmp_path, long_parquet):
    model = _model_dir(tmp_path / "model")
    before = {str(p): p.read_bytes() for p in model.rglob("*") if p.is_file()}
    result = _invoke(runner, ["fit-clusters", "-i", long_parquet, "-m", model])
    _assert_clean_failure(result, "--overwrite")
    assert {str(p): p.read_bytes() for p in model.rglob("*") if p.is_file()} == before


def test_bad_config_file_exit_1(runner, tmp_path, long_parquet):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nk_shot = 'many'\n")
    result = _invoke(runner, ["meta-train", "-i", long_parquet, "-m", tmp_path / "m", "--config", cfg])
    _assert_clean_failure(result, "train.k_shot")


# -- the CLI builds the config and prints the pipeline's summary -----------------------------------


def test_config_precedence_and_json_through_the_cli(runner, tmp_path, long_parquet, monkeypatch):
    seen: dict = {}

    def fake(*, config: Config, input: Path, model_dir: Path, overwrite: bool, allow_partial: bool):
        seen.update(config=config, input=input, overwrite=overwrite)
        return {"summary": "trained 2 clusters", "clusters": 2}

    monkeypatch.setattr(meta_train, "meta_train", fake)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nk_shot = 10\ninner_steps = 2\n[columns]\nid_col = "sid"\n[runtime]\nthreads = 2\n')
    args = ["meta-train", "-i", long_parquet, "-m", tmp_path / "m", "--config", cfg, "--k-shot", "7", "--first-order"]
    result = _invoke(runner, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "trained 2 clusters"
    c = seen["config"]
    assert (c.train.k_shot, c.train.inner_steps, c.train.inner_lr, c.train.first_order) == (7, 2, 0.01, True)
    assert c.columns.id_col == "sid" and c.runtime.threads == 2 and seen["overwrite"] is False

    result = _invoke(runner, [*args, "--json", "--second-order", "--overwrite"])
    assert json.loads(result.stdout) == {"clusters": 2}
    assert seen["config"].train.first_order is False and seen["overwrite"] is True


def test_unexpected_errors_keep_their_traceback(runner, tmp_path, long_parquet, monkeypatch):
    def broken(**kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(fit_clusters, "fit_clusters", broken)
    result = _invoke(runner, ["fit-clusters", "-i", long_parquet, "-m", tmp_path / "m"])
    assert result.exit_code == 70  # EX_SOFTWARE: a bug, told apart from bad input (1)
    assert "Traceback (most recent call last)" in result.stderr
    assert "ZeroDivisionError: a bug" in result.stderr


def test_quiet_silences_info_logs(runner, tmp_path, long_parquet, monkeypatch):
    def fake(*, config, input, model_dir, overwrite, engine, ray_address):
        common.load_input(config, input)
        return {"summary": "ok"}

    monkeypatch.setattr(fit_clusters, "fit_clusters", fake)
    loud = _invoke(runner, ["fit-clusters", "-i", long_parquet, "-m", tmp_path / "m"])
    quiet = _invoke(runner, ["fit-clusters", "-i", long_parquet, "-m", tmp_path / "m", "--quiet"])
    assert "144 rows" in loud.stderr and quiet.stderr == ""
    assert loud.stdout.strip() == quiet.stdout.strip() == "ok"


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "maml_anomaly", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert "daily-score" in result.stdout


def _walk(command, prefix=()):
    """(name path, command) for every leaf command of the click tree."""
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        yield prefix, command
        return
    for name, sub in subcommands.items():
        yield from _walk(sub, (*prefix, name))


def test_docs_mention_every_command_and_option():
    import typer

    docs = (Path(__file__).resolve().parents[1] / "docs" / "usage.md").read_text()
    for path, command in _walk(typer.main.get_command(app)):
        assert f"### {' '.join(path)}" in docs, path
        for param in command.params:
            for opt in [*param.opts, *param.secondary_opts]:
                if opt.startswith("--"):
                    assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", docs), (path, opt)


def test_backtest_range_and_output_errors(runner, tmp_path, long_parquet):
    model = _model_dir(tmp_path / "model")
    out = tmp_path / "bt.parquet"
    base = ["backtest", "-i", long_parquet, "-m", model, "-o", out]
    _assert_clean_failure(_invoke(runner, [*base, "--start", "2024-01-03", "--end", "2024-01-01"]), "after --end")
    _assert_clean_failure(_invoke(runner, [*base, "--start", "2031-01-01"]), "no data between")
    _assert_clean_failure(_invoke(runner, [*base, "--end", "tomorrow"]), "YYYY-MM-DD")
    assert not out.exists()
    result = _invoke(runner, ["backtest", "-i", long_parquet, "-m", model, "-o", tmp_path])
    _assert_clean_failure(result, "is a directory")


def test_evaluate_checks_its_files(runner, tmp_path, long_parquet):
    scores = tmp_path / "scores.parquet"
    from maml_anomaly.data.schemas import empty_scores_frame

    empty_scores_frame().to_parquet(scores, index=False)
    labels = tmp_path / "labels.parquet"
    pd.DataFrame({"series": ["a"], "when": [pd.Timestamp("2024-01-01")]}).to_parquet(labels, index=False)
    _assert_clean_failure(_invoke(runner, ["evaluate", "--scores", scores, "--labels", labels]), "(unique_id, ds)")
    _assert_clean_failure(_invoke(runner, ["evaluate", "--scores", long_parquet, "--labels", labels]), "y_hat")
    _assert_clean_failure(
        _invoke(runner, ["evaluate", "--scores", tmp_path / "no.parquet", "--labels", labels]), "does not exist"
    )


def test_demo_refuses_a_non_empty_workdir(runner, tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "keep.txt").write_text("x")
    _assert_clean_failure(_invoke(runner, ["demo", "--workdir", tmp_path / "w"]), "--overwrite")
    assert (tmp_path / "w" / "keep.txt").read_text() == "x"
