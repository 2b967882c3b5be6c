"""Configuration: defaults < TOML file < flags, and strict checking of keys, types and values."""

from __future__ import annotations

import pytest

from maml_anomaly.config import Config, TrainConfig
from maml_anomaly.errors import ConfigError


def _toml(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults():
    c = Config()
    assert (c.columns.id_col, c.columns.time_col, c.columns.value_col) == ("unique_id", "ds", "y")
    assert c.input.on_duplicate == "error"
    assert c.train.k_shot == 24 and c.train.hidden == (40, 40) and c.train.learn_inner_lr is True
    assert c.score.threshold == 3.0 and c.runtime.device == "auto" and c.runtime.threads == 1
    assert c.clusters.max_period == 0


def test_precedence_default_file_flag(tmp_path):
    path = _toml(tmp_path, '[train]\nk_shot = 10\ninner_steps = 3\nhidden = [64, 32]\n[columns]\nid_col = "sid"\n')
    c = Config.load(path, {"k_shot": 7, "inner_lr": None, "columns.value_col": "v"})
    assert c.train.k_shot == 7  # flag beats file
    assert c.train.inner_steps == 3  # file beats default
    assert c.train.inner_lr == 0.01  # None = not given: default stays
    assert c.train.hidden == (64, 32)
    assert (c.columns.id_col, c.columns.value_col) == ("sid", "v")


def test_integers_accepted_for_floats(tmp_path):
    c = Config.load(_toml(tmp_path, "[score]\nthreshold = 5\n"))
    assert c.score.threshold == 5.0 and isinstance(c.score.threshold, float)


@pytest.mark.parametrize(
    "text, words",
    [
        ("[trian]\nk_shot = 1\n", ["[trian]", "[train]"]),
        ("[train]\nkshot = 1\n", ["train.kshot", "k_shot"]),
        ('[train]\nk_shot = "ten"\n', ["train.k_shot", "an integer", "'ten'"]),
        ("[train]\nfirst_order = 1\n", ["train.first_order", "boolean"]),
        ("[train]\nhidden = [40, 'x']\n", ["train.hidden", "list of integers"]),
        ("[train]\nk_shot = 1.5\n", ["train.k_shot", "an integer"]),
        ("train = 3\n", ["[train]", "table"]),
    ],
)
def test_unknown_keys_and_wrong_types_name_key_type_and_file(tmp_path, text, words):
    path = _toml(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        Config.load(path)
    msg = str(err.value)
    for word in words:
        assert word in msg
    if "table" not in words:
        assert str(path) in msg


def test_bad_values_and_files(tmp_path):
    with pytest.raises(ConfigError, match="on_duplicate"):
        Config.load(_toml(tmp_path, '[input]\non_duplicate = "sum"\n'))
    with pytest.raises(ConfigError, match="device"):
        Config.load(None, {"device": "tpu"})
    with pytest.raises(ConfigError, match="k_shot"):
        Config.load(None, {"k_shot": 0})
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.load(_toml(tmp_path, "[train\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="unknown option"):
        Config.load(None, {"kshot": 3})
    with pytest.raises(ConfigError, match="different columns"):
        Config.load(None, {"id_col": "y"})


def test_dict_round_trip():
    c = Config.load(None, {"k_shot": 5, "hidden": [8, 8, 8], "device": "cpu", "on_duplicate": "mean"})
    d = c.to_dict()
    assert d["train"]["hidden"] == [8, 8, 8]
    assert Config.from_dict(d) == c


def test_frozen():
    with pytest.raises(AttributeError):
        TrainConfig().k_shot = 3  # type: ignore[misc]
