"""[train] k_per_period: K = one period of points in clusters with a period, the configured K elsewhere."""

from maml_anomaly.config import Config
from maml_anomaly.core.tasks import cluster_k_shot


def test_k_follows_the_period_only_when_asked_and_only_where_there_is_one():
    assert cluster_k_shot(24, 288, per_period=True) == 288  # a day of 5-minute points
    assert cluster_k_shot(24, 7, per_period=True) == 7  # a week of daily points
    assert cluster_k_shot(24, 0, per_period=True) == 24  # aperiodic: the configured K
    assert cluster_k_shot(24, 288, per_period=False) == 24  # the default


def test_the_option_reads_from_the_config_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[train]\nk_per_period = true\n")
    assert Config.load(path).train.k_per_period is True
    assert Config.load(None).train.k_per_period is False
