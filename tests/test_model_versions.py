"""Model versions through the CLI: a retrain never guts the serving model, damaged weights are refused.

Every case runs the real commands. A failed or killed meta-train must leave the previous
version serving: ``MODEL/current`` unchanged and daily-score still scoring, byte for byte as
before.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from reliability_data import (
    TRAIN_ARGS,
    ErrorCase,
    ForkRunner,
    Work,
    assert_clean_failure,
    case,
    history,
    invoke,
    served,
    sha256,
    snapshot,
)

from maml_anomaly.commands import meta_train as meta_train_command
from maml_anomaly.locking import CRASH_ENV, lock_path, read_holder

# -- data and helpers ---------------------------------------------------------------------------------


def two_kinds(noise_hours: int = 240) -> pd.DataFrame:
    """history() plus four random walks (an aperiodic cluster) of ``noise_hours`` ending with it."""
    rng = np.random.default_rng(5)
    end = history()["ds"].max()
    ds = pd.date_range(end=end, periods=noise_hours, freq="h")
    walks = [
        pd.DataFrame({"unique_id": f"n{i}", "ds": ds, "y": rng.normal(0, 1, noise_hours).cumsum()}) for i in range(4)
    ]
    return pd.concat([history(), *walks], ignore_index=True)


def fit_and_train(w: Work, data: Path, name: str = "model", *fit_args: str) -> Path:
    model = w.root / name
    for args in (
        ["fit-clusters", "-i", data, "-m", model, *fit_args, "-q"],
        ["meta-train", "-i", data, "-m", model, *TRAIN_ARGS, "-q"],
    ):
        result = invoke(args)
        assert result.exit_code == 0, result.output
    return model


def scores_of(w: Work, data: Path, model: Path, name: str) -> Path:
    out = w.root / name
    # these tests are about which model serves, not about the share of series it can score
    result = invoke(["daily-score", "-i", data, "-m", model, "-o", out, "-q", "--max-failed-fraction", "1"])
    assert result.exit_code == 0, result.output
    return out


def serving(model: Path) -> str:
    return os.readlink(model / "current")


def rewrite_in_manifest(model: Path, name: str, data: bytes) -> None:
    """Replace a file of the serving version and record its new checksum (damage the checksum cannot see)."""
    version = served(model)
    (version / name).write_bytes(data)
    path = version / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    path.write_text(json.dumps(manifest))


def weights_file(model: Path) -> str:
    return sorted(p.name for p in served(model).glob("*.safetensors"))[0]


# -- failed retrains: exit 1, the previous model keeps serving ------------------------------------------


def _too_little_history(w: Work) -> list:
    short = w.parquet(history(days=1), "short.parquet")
    return ["meta-train", "-i", short, "-m", w.model(), "--overwrite", *TRAIN_ARGS]


def _k_shot_too_large(w: Work) -> list:
    return ["meta-train", "-i", w.good(), "-m", w.model(), "--overwrite", *TRAIN_ARGS, "--k-shot", "500"]


def _partial_without_flag(w: Work) -> list:
    full = w.parquet(two_kinds(), "two.parquet")
    model = fit_and_train(w, full, "model", "--min-cluster-size", "4")
    short = w.parquet(two_kinds(noise_hours=20), "short.parquet")
    return ["meta-train", "-i", short, "-m", model, "--overwrite", *TRAIN_ARGS]


def _weights_not_finite(w: Work) -> list:
    import torch
    from safetensors.torch import load, save

    model = w.model()
    name = weights_file(model)
    tensors = load((served(model) / name).read_bytes())
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    rewrite_in_manifest(model, name, save(tensors, metadata={"cluster": "p24"}))
    return w.score(w.good(), model)


def _calibration_not_finite(w: Work) -> list:
    model = w.model()
    detector = json.loads((served(model) / "detector.json").read_text())
    for meta in detector["clusters"].values():
        meta["calibration"]["quantiles"][0] = float("inf")
    rewrite_in_manifest(model, "detector.json", json.dumps(detector).encode())  # json writes Infinity
    return w.backtest(w.good(), model)


def _safetensors_header_damaged(w: Work) -> list:
    model = w.model()
    name = weights_file(model)
    data = bytearray((served(model) / name).read_bytes())
    data[8:24] = b"{not a header!!!"  # the JSON header right after its 8-byte length
    rewrite_in_manifest(model, name, bytes(data))
    return w.score(w.good(), model)


def _clusters_damaged(w: Work) -> list:
    model = w.model()
    rewrite_in_manifest(model, "clusters.parquet", b"PAR1" + b"\x00" * 64 + b"PAR1")
    return w.score(w.good(), model)


ERROR_CASES = [
    ErrorCase("meta-train-too-little-history", _too_little_history, ("trained none", "keeps serving")),
    ErrorCase("meta-train-k-shot-too-large", _k_shot_too_large, ("trained none", "--k-shot", "keeps serving")),
    ErrorCase("meta-train-skips-a-cluster", _partial_without_flag, ("skipped 1 of", "p0", "--allow-partial")),
    ErrorCase("weights-not-finite-on-load", _weights_not_finite, (".safetensors", "NaN or infinite")),
    ErrorCase("calibration-not-finite-on-load", _calibration_not_finite, ("detector.json", "calibration")),
    ErrorCase(
        "safetensors-header-damaged",
        _safetensors_header_damaged,
        (".safetensors", "not a readable safetensors file", "damaged"),
    ),
    ErrorCase(
        "clusters-damaged-checksum-rewritten", _clusters_damaged, ("clusters.parquet", "not a readable parquet file")
    ),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c.id for c in ERROR_CASES])
def test_error_case_exits_1_and_the_previous_model_keeps_serving(case, tmp_path):
    w = Work(tmp_path)
    args = case.build(w)
    before = snapshot(tmp_path)
    result = invoke(args)
    assert_clean_failure(result, *case.words)
    assert snapshot(tmp_path) == before  # no version folder, link, lock or temporary file left
    if args[0] == "meta-train":  # the model it tried to replace still scores
        served = invoke(w.score(w.good(), args[args.index("-m") + 1], "-q", "--max-failed-fraction", "1"))
        assert served.exit_code == 0, served.output


@case("meta-train-diverged")
def test_status_diverged_training_is_refused_when_written(tmp_path, monkeypatch):
    """A cluster whose training ends with NaN weights: exit 1 naming it; nothing published."""
    w = Work(tmp_path)
    model, data = w.model(), w.good()
    train = meta_train_command.train_cluster

    def diverging(*args, **kwargs):
        model = train(*args, **kwargs)
        first = sorted(model.params)[0]
        model.params[first] = model.params[first] * float("nan")
        return model

    monkeypatch.setattr(meta_train_command, "train_cluster", diverging)
    before = snapshot(tmp_path)
    result = invoke(["meta-train", "-i", data, "-m", model, "--overwrite", *TRAIN_ARGS])
    assert_clean_failure(result, "cluster p24", "diverged", "NaN or infinite", "keeps serving")
    assert snapshot(tmp_path) == before


@case("meta-train-allow-partial")
def test_status_allow_partial_publishes_the_trained_clusters_and_names_the_skipped(tmp_path):
    w = Work(tmp_path)
    model = fit_and_train(w, w.parquet(two_kinds(), "two.parquet"), "model", "--min-cluster-size", "4")
    old = serving(model)
    short = w.parquet(two_kinds(noise_hours=20), "short.parquet")
    result = invoke(
        ["meta-train", "-i", short, "-m", model, "--overwrite", "--allow-partial", *TRAIN_ARGS, "--json", "-q"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["skipped"] == ["p0"] and summary["trained"] == summary["clusters"] - 1
    assert serving(model) != old and summary["version"] == Path(serving(model)).name
    scores = pd.read_parquet(scores_of(w, w.root / "two.parquet", model, "s.parquet"))
    status = scores.groupby("unique_id")["status"].first()
    assert (status[status.index.str.startswith("n")] == "no_model").all()
    assert (status[status.index.str.startswith("s")] == "ok").all()


# -- kills: the previous model keeps serving ------------------------------------------------------------


@pytest.fixture(scope="module")
def fork(tmp_path_factory):
    runner = ForkRunner(tmp_path_factory.mktemp("fork"))
    yield runner
    runner.close()


@case("meta-train-sigterm-between-clusters")
def test_status_sigterm_between_clusters_leaves_the_previous_model_serving(fork, tmp_path):
    w = Work(tmp_path)
    data = w.parquet(two_kinds(), "two.parquet")
    model = fit_and_train(w, data, "model", "--min-cluster-size", "4")
    old, old_scores = serving(model), sha256(scores_of(w, data, model, "old.parquet"))
    # long clusters: the signal lands while the second cluster trains, whatever the machine's speed
    slow = [
        "--iterations",
        "1000000",
        "--time-budget",
        "10",
        "--k-shot",
        "8",
        "--inner-steps",
        "1",
        "--meta-batch-size",
        "4",
    ]
    log = fork.start(["meta-train", "-i", data, "-m", model, "--overwrite", *slow])
    assert fork.wait_for_log(log, "adapted query mse", timeout=120), log.read_text()
    holder = read_holder(lock_path(model))
    assert holder is not None and holder.command == "meta-train"
    os.kill(holder.pid, signal.SIGTERM)
    sig, code, text = fork.finish(log)
    assert sig == signal.SIGTERM or code not in (0, None), text[-2000:]
    assert serving(model) == old and not (model / "pending").exists()
    assert sha256(scores_of(w, data, model, "after.parquet")) == old_scores
    assert len(list((model / "versions").iterdir())) == 1  # the killed run wrote no version


@case("meta-train-killed-before-switch")
def test_status_kill_after_writing_before_switching_then_rerun(fork, tmp_path):
    """SIGKILL with the new version written but not switched: the old one serves; the rerun
    switches to a new one and removes the dead run's folder."""
    w = Work(tmp_path)
    model, data = w.model(), w.good()
    old, old_scores = serving(model), sha256(scores_of(w, data, model, "old.parquet"))
    args = ["meta-train", "-i", data, "-m", model, "--overwrite", *TRAIN_ARGS, "-q"]
    sig, _, text = fork.run(args, {CRASH_ENV: "meta-train:before-switch"})
    assert sig == signal.SIGKILL, text[-2000:]
    assert serving(model) == old and len(list((model / "versions").iterdir())) == 2  # old + the orphan
    assert sha256(scores_of(w, data, model, "after.parquet")) == old_scores
    rerun = invoke(args)
    assert rerun.exit_code == 0, rerun.output
    names = {p.name for p in (model / "versions").iterdir()}
    assert serving(model) != old and names == {Path(old).name, Path(serving(model)).name}  # orphan pruned


# -- column names recorded at fit-clusters --------------------------------------------------------------


@case("column-names-recorded-in-the-model")
def test_status_column_names_of_fit_clusters_are_the_defaults_later(tmp_path):
    w = Work(tmp_path)
    renamed = history().rename(columns={"unique_id": "sensor", "ds": "at", "y": "reading"})
    renamed["other"] = renamed["reading"] * 2.0
    data = w.parquet(renamed)
    model = w.root / "model"
    cols = ["--id-col", "sensor", "--time-col", "at", "--value-col", "reading"]
    assert invoke(["fit-clusters", "-i", data, "-m", model, *cols, "-q"]).exit_code == 0
    assert invoke(["meta-train", "-i", data, "-m", model, *TRAIN_ARGS, "-q"]).exit_code == 0
    plain = scores_of(w, data, model, "plain.parquet")  # no column options
    assert (pd.read_parquet(plain)["status"] == "ok").all()
    bt = invoke(["backtest", "-i", data, "-m", model, "-o", w.root / "bt.parquet", "--start", "2024-01-09", "-q"])
    assert bt.exit_code == 0, bt.output
    explicit = invoke(w.score(data, model, "--value-col", "other", "-q"))  # an explicit option still wins
    assert explicit.exit_code == 0, explicit.output
    assert np.allclose(pd.read_parquet(w.out)["y"], 2.0 * pd.read_parquet(plain)["y"])
    wrong = invoke(w.score(data, model, "--id-col", "nope"))
    assert_clean_failure(wrong, "nope")


# -- the cron recipe ------------------------------------------------------------------------------------


@case("cron-weekly-retrain")
def test_status_cron_recipe_promotes_a_new_version_only_when_complete(tmp_path):
    """docs/operations.md's crontab, command by command: daily scoring, a weekly retrain that fails
    (yesterday's model keeps scoring), then one that succeeds (the new version serves)."""
    w = Work(tmp_path)
    history_path, recent = w.root / "history.parquet", w.good()
    model = w.root / "srv" / "model"
    (w.root / "keep2.toml").write_text("[runtime]\nkeep_versions = 2\n")
    weekly = [
        [
            "fit-clusters",
            "-i",
            history_path,
            "-m",
            model,
            "--overwrite",
            "--lock-timeout",
            "600",
            "-c",
            w.root / "keep2.toml",
        ],
        ["meta-train", "-i", history_path, "-m", model, *TRAIN_ARGS, "-c", w.root / "keep2.toml"],
    ]
    daily = [
        "daily-score",
        "-i",
        recent,
        "-m",
        model,
        "-o",
        w.out,
        "--lock-timeout",
        "1800",
        "--max-failed-fraction",
        "0.05",
        "--json",
    ]

    def retrain() -> int:
        for args in weekly:
            result = invoke(args)
            if result.exit_code:
                return result.exit_code
        return 0

    history().to_parquet(history_path, index=False)
    assert retrain() == 0
    assert invoke(daily).exit_code == 0
    first, first_scores = serving(model), sha256(w.out)

    history(days=1).to_parquet(history_path, index=False)  # the upstream job delivered one day only
    assert retrain() == 1
    assert serving(model) == first and (model / "pending").exists()  # new clusters wait; the model serves
    assert invoke(daily).exit_code == 0 and sha256(w.out) == first_scores

    history(seed=3).to_parquet(history_path, index=False)
    for _ in range(2):
        assert retrain() == 0
    assert serving(model) != first and not (model / "pending").exists()
    assert len(list((model / "versions").iterdir())) == 2  # keep_versions = 2: the oldest pruned
    assert invoke(daily).exit_code == 0 and sha256(w.out) != first_scores


@case("flat-model-directory")
def test_status_a_flat_model_directory_of_the_earlier_layout_still_scores_and_is_upgraded(tmp_path):
    w = Work(tmp_path)
    data = w.good()
    versioned = w.model("versioned")
    expected = sha256(scores_of(w, data, versioned, "expected.parquet"))
    flat = w.root / "flat"
    shutil.copytree(served(versioned), flat)  # the files directly in the folder, as before versions
    assert sha256(scores_of(w, data, flat, "flat.parquet")) == expected
    result = invoke(["meta-train", "-i", data, "-m", flat, "--overwrite", *TRAIN_ARGS, "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in flat.iterdir()) == ["current", "versions"]
    assert sha256(scores_of(w, data, flat, "upgraded.parquet")) == expected  # same data, same seed


# -- the version folders themselves -----------------------------------------------------------------------


def test_prune_keeps_the_linked_versions_and_the_newest_trained_ones(tmp_path):
    from maml_anomaly import model_versions as v

    root = tmp_path / "model"
    made = []
    for i, trained in enumerate((True, True, True, False, True, False)):  # oldest first
        folder = root / v.VERSIONS / f"20260101T00000{i}.000000Z-abcd"
        folder.mkdir(parents=True)
        if trained:
            (folder / "detector.json").write_text("{}")
        made.append(folder.name)
    v.switch(root, v.CURRENT, root / v.VERSIONS / made[1])  # an older version serves (a rollback)
    v.switch(root, v.PENDING, root / v.VERSIONS / made[3])
    removed = v.prune(root, keep=2)
    left = sorted(p.name for p in (root / v.VERSIONS).iterdir())
    assert left == sorted([made[1], made[3], made[4]])  # serving, pending, and the newest other trained one
    assert sorted(removed) == sorted([made[0], made[2], made[5]])
    assert v.remove_dead_versions(root) == [made[4]]  # newer than the serving one and unlinked


def test_is_model_dir_and_inside_model_dir(tmp_path):
    from maml_anomaly.store import inside_model_dir, is_model_dir

    model = trained_model_dir(tmp_path)
    assert (
        is_model_dir(model) and not is_model_dir(tmp_path) and not is_model_dir(model / "current" / "clusters.parquet")
    )
    assert inside_model_dir(model / "current" / "clusters.parquet") == model
    assert inside_model_dir(model / "scores.parquet") == model
    assert inside_model_dir(tmp_path / "scores.parquet") is None


def trained_model_dir(root: Path) -> Path:
    return Work(root).model()
