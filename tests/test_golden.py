"""The golden run (tests/golden_run.py) gives the recorded outputs, and Ray gives local's.

Two layers, because another CPU may round the last bits of numpy/torch differently and
meta-training amplifies them:
- on the machine that recorded the fixture (same numpy CPU features, library versions and
  platform), every output file's sha256 equals the recorded one, on both engines;
- on any machine, the local engine's tables are within a tolerance of the recorded ones: ids,
  timestamps, clusters and statuses exactly, floats to a relative 1e-6, flags equal except on
  points whose score lies within 1% of the threshold; Ray's tables equal local's (floats to 1e-9).

Re-record after a change meant to change outputs (and say so in the commit message):

    python tests/golden/record.py
"""

from __future__ import annotations

import os

import golden_run as g
import pytest

RAY_RTOL = 1e-9
MACHINE_RTOL = 1e-6
FLAG_MARGIN = 0.01


@pytest.fixture(scope="module")
def fixture():
    return g.load_fixture()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    return g.run(tmp_path_factory.mktemp("golden-local"), "local")


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory):
    pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return g.run(tmp_path_factory.mktemp("golden-ray"), "ray")


def _same_machine(meta: dict) -> None:
    here = g.fingerprint()
    if here != meta["fingerprint"]:
        changed = sorted(k for k in here if here[k] != meta["fingerprint"].get(k))
        pytest.skip(f"not the machine that recorded the golden hashes (differs in {', '.join(changed)})")


@pytest.mark.parametrize("engine", g.ENGINES)
def test_outputs_are_byte_identical_on_the_recording_machine(engine, fixture, request):
    meta, _ = fixture
    _same_machine(meta)
    outputs = request.getfixturevalue(f"{engine}_run")
    assert g.digests(outputs) == meta["sha256"][engine]


def test_local_values_match_the_fixture_on_any_machine(fixture, local_run):
    _, want = fixture
    got = g.value_tables(local_run)
    flags_agree = True
    for name in ("clusters", "daily", "backtest"):
        g.assert_values_close(got[name], want[name], name, rtol=MACHINE_RTOL, margin=FLAG_MARGIN)
        if "is_anomaly" in want[name]:
            flags_agree &= bool((got[name]["is_anomaly"] == want[name]["is_anomaly"]).all())
    if flags_agree:  # a flag that flipped near the threshold moves the events: compare them only otherwise
        g.assert_values_close(got["events"], want["events"], "events", rtol=MACHINE_RTOL)
    late = got["daily"][got["daily"]["unique_id"].isin(g.LATE)]
    assert set(late["unique_id"]) == set(g.LATE) and late["cluster"].notna().all()  # the unseen series were assigned


def test_ray_equals_local(local_run, ray_run):
    local, ray = g.value_tables(local_run), g.value_tables(ray_run)
    for name in g.VALUE_TABLES:
        g.assert_values_close(ray[name], local[name], name, rtol=RAY_RTOL)
        if "is_anomaly" in local[name]:
            assert (ray[name]["is_anomaly"] == local[name]["is_anomaly"]).all(), name
