import json

import numpy as np
import pytest

from maml_anomaly.core.clustering import PeriodClusterer

T = 24 * 14


def _panel(seed=0):
    """150 sine-shaped and 150 square-shaped daily series, 60 noise, 3 with period 12."""
    rng = np.random.default_rng(seed)
    t = np.arange(T)
    a = np.sin(2 * np.pi * t / 24)[None] + 0.3 * rng.normal(size=(150, T))
    b = np.sign(np.sin(2 * np.pi * (t + 6) / 24))[None] + 0.3 * rng.normal(size=(150, T))
    c = rng.normal(size=(60, T))
    d = np.sin(2 * np.pi * t / 12)[None] + rng.normal(size=(3, T))
    x = np.vstack([a, b, c, d])
    per = np.r_[np.full(300, 24), np.zeros(60, np.int64), np.full(3, 12)]
    return x, per


def test_groups_by_period_then_shape():
    x, per = _panel()
    m = PeriodClusterer(min_cluster_size=50).fit(x, per)
    lab = m.labels_
    assert lab.shape == (363,) and lab.dtype == object
    assert set(lab[300:360]) == {"p0"}
    # the two shapes are split, each shape in a single sub-cluster
    assert len(set(lab[:150])) == 1 and len(set(lab[150:300])) == 1
    assert lab[0] != lab[150] and {lab[0], lab[150]} == {"p24-0", "p24-1"}
    # a tiny period group joins the nearest period's cluster; sizes add up
    assert set(lab[360:]) <= {"p24-0", "p24-1"}
    assert m.clusters_["size"].sum() == 363
    assert set(m.clusters_["cluster"]) == {"p0", "p24-0", "p24-1"}


def test_small_group_keeps_own_cluster_from_a_handful():
    x, per = _panel()
    per = per.copy()
    per[300:310] = 48  # 10 series: their own cluster
    m = PeriodClusterer(min_cluster_size=50).fit(x, per)
    assert set(m.labels_[300:310]) == {"p48"}


def test_uniform_group_is_not_split():
    x, per = _panel()
    m = PeriodClusterer(min_cluster_size=50).fit(x[:150], per[:150])
    assert set(m.labels_) == {"p24"}
    assert m.centroids_ == {}


def test_sub_clusters_respect_min_size_and_max():
    x, per = _panel()
    m = PeriodClusterer(min_cluster_size=120, max_subclusters=8).fit(x[:300], per[:300])
    sizes = m.clusters_.set_index("cluster")["size"]
    assert (sizes >= 120).all()
    m = PeriodClusterer(min_cluster_size=10, max_subclusters=1).fit(x[:300], per[:300])
    assert set(m.labels_) == {"p24"}


def test_deterministic_names_across_reruns():
    x, per = _panel()
    a = PeriodClusterer(seed=3).fit(x, per).labels_
    b = PeriodClusterer(seed=3).fit(x, per).labels_
    np.testing.assert_array_equal(a, b)


def test_json_round_trip_and_predict_unseen():
    x, per = _panel()
    m = PeriodClusterer().fit(x, per)
    state = json.loads(json.dumps(m.to_dict()))
    m2 = PeriodClusterer.from_dict(state)
    np.testing.assert_array_equal(m2.predict(x, per), m.labels_)
    # unseen series: new noise around each shape, an unknown period, an aperiodic one
    x_new, _ = _panel(seed=9)
    got = m2.predict(x_new[[0, 200, 310, 0]], np.array([24, 24, 0, 25]))
    assert got[0] == m.labels_[0] and got[1] == m.labels_[200] and got[2] == "p0"
    assert got[3] in {"p24-0", "p24-1"}


def test_bad_state_and_shapes_are_refused():
    with pytest.raises(ValueError):
        PeriodClusterer.from_dict({"format_version": 99})
    with pytest.raises(ValueError):
        PeriodClusterer().fit(np.zeros((3, 10)), np.zeros(2, np.int64))
    with pytest.raises(RuntimeError):
        PeriodClusterer().predict(np.zeros((1, 10)), np.zeros(1, np.int64))
