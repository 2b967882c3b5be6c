"""plot: the picture holds the series, band and flags; the flagged point is drawn where it should be."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

pytest.importorskip("matplotlib")

from maml_anomaly import plotting  # noqa: E402
from maml_anomaly.cli import app  # noqa: E402
from maml_anomaly.core.events import build_events  # noqa: E402

SPIKE_AT = 60  # index of the anomaly in series "a"


def _data():
    """Two hourly series of 96 points; the last 48 are scored; "a" has a spike at SPIKE_AT."""
    ds = pd.date_range("2024-03-01", periods=96, freq="h")
    t = np.arange(96)
    frames, scores = [], []
    for uid, level in (("a", 10.0), ("b", 50.0)):
        y = level + 3 * np.sin(2 * np.pi * t / 24)
        if uid == "a":
            y[SPIKE_AT] += 12.0
        frames.append(pd.DataFrame({"unique_id": uid, "ds": ds, "y": y}))
        y_hat = level + 3 * np.sin(2 * np.pi * t / 24)
        flag = np.zeros(96, bool)
        if uid == "a":
            flag[SPIKE_AT] = True
        score = np.where(flag, 9.0, 0.5)
        scores.append(
            pd.DataFrame(
                {
                    "unique_id": uid,
                    "ds": ds,
                    "y": y,
                    "y_hat": y_hat,
                    "lower": y_hat - 1.0,
                    "upper": y_hat + 1.0,
                    "score": score,
                    "is_anomaly": flag,
                    "cluster": "c0",
                    "status": "ok",
                    "p_value": np.where(flag, 1e-19, 0.6),
                }
            ).iloc[48:]
        )
    return pd.concat(frames, ignore_index=True), pd.concat(scores, ignore_index=True)


def test_plot_data_holds_the_flagged_point_band_and_event():
    history, scores = _data()
    pd_ = plotting.series_plot_data(history, scores, build_events(scores), "a")
    assert list(pd.to_datetime(pd_.flagged_ds)) == [history["ds"][SPIKE_AT]]
    assert pd_.flagged_y[0] == pytest.approx(history["y"][SPIKE_AT])
    assert pd_.ds.size == 48 and np.all(pd_.lower < pd_.upper)
    assert pd_.history_ds.size == 96  # 48 points of context + the scored 48
    assert len(pd_.events) == 1 and pd_.events.iloc[0]["n_points"] == 1
    assert "1 flagged point(s) in 1 event(s)" in pd_.title


def test_rendered_marker_is_red_at_the_anomaly():
    """Render, find the anomaly's pixel through the axes' transform, read its colour back."""
    history, scores = _data()
    fig = plotting.render(plotting.series_plot_data(history, scores, build_events(scores), "a"))
    fig.canvas.draw()
    ax = fig.axes[0]
    import matplotlib.dates as mdates

    x = mdates.date2num(history["ds"][SPIKE_AT])
    px, py = ax.transData.transform((x, history["y"][SPIKE_AT]))
    rgba = np.asarray(fig.canvas.buffer_rgba())  # (H, W, 4), origin top-left
    row, col = int(round(rgba.shape[0] - py)), int(round(px))
    patch = rgba[row - 2 : row + 3, col - 2 : col + 3, :3].reshape(-1, 3).astype(int)
    red = (patch[:, 0] > 180) & (patch[:, 1] < 90) & (patch[:, 2] < 90)
    assert red.mean() > 0.8, patch
    # and the same spot in series "b" (no flag) is not red
    fig_b = plotting.render(plotting.series_plot_data(history, scores, build_events(scores), "b"))
    fig_b.canvas.draw()
    ax_b = fig_b.axes[0]
    px, py = ax_b.transData.transform((x, 50.0 + 3 * np.sin(2 * np.pi * SPIKE_AT / 24)))
    rgba_b = np.asarray(fig_b.canvas.buffer_rgba())
    row, col = int(round(rgba_b.shape[0] - py)), int(round(px))
    patch_b = rgba_b[row - 2 : row + 3, col - 2 : col + 3, :3].reshape(-1, 3).astype(int)
    assert not ((patch_b[:, 0] > 180) & (patch_b[:, 1] < 90) & (patch_b[:, 2] < 90)).any()


def _write(tmp_path):
    history, scores = _data()
    history.to_parquet(tmp_path / "data.parquet")
    scores.to_parquet(tmp_path / "scores.parquet")
    return tmp_path / "data.parquet", tmp_path / "scores.parquet"


def _invoke(args):
    return CliRunner().invoke(app, [str(a) for a in args], prog_name="maml-anomaly")


def test_cli_one_series_png(tmp_path):
    data, scores = _write(tmp_path)
    out = tmp_path / "a.png"
    r = _invoke(["plot", "--input", data, "--scores", scores, "--series", "a", "--output", out, "-q"])
    assert r.exit_code == 0, r.output
    blob = out.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(blob) < 500_000


def test_cli_top_n_into_a_folder(tmp_path):
    data, scores = _write(tmp_path)
    out = tmp_path / "top"
    r = _invoke(["plot", "--input", data, "--scores", scores, "--top", "3", "--output", out, "-q"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["01_a.png"]  # only "a" has a flag


def test_cli_errors(tmp_path):
    data, scores = _write(tmp_path)
    r = _invoke(["plot", "--input", data, "--scores", scores, "--series", "zz", "--output", tmp_path / "z.png"])
    assert r.exit_code == 1 and "zz" in r.output and not (tmp_path / "z.png").exists()
    r = _invoke(["plot", "--input", data, "--scores", scores, "--top", "2", "--output", tmp_path / "x.png"])
    assert r.exit_code == 1 and "folder" in r.output


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    from maml_anomaly.errors import InputError

    with pytest.raises(InputError, match=r"pip install"):
        plotting.require_matplotlib()
