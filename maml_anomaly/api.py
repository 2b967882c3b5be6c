"""The Python API: every command as a keyword-only function (what the CLI calls), for scripts and benchmarks.

Each takes a :class:`~maml_anomaly.config.Config` plus the command's paths, raises
:class:`~maml_anomaly.errors.MamlAnomalyError` subclasses for anything the user can fix, and
returns a JSON-ready summary dict whose key ``"summary"`` holds the one-line human summary.
"""

from maml_anomaly.commands.common import load_input
from maml_anomaly.commands.demo import demo
from maml_anomaly.commands.evaluate import evaluate
from maml_anomaly.commands.fit_clusters import fit_clusters
from maml_anomaly.commands.meta_train import meta_train
from maml_anomaly.commands.plot import plot
from maml_anomaly.commands.score import backtest, daily_score

__all__ = ["backtest", "daily_score", "demo", "evaluate", "fit_clusters", "load_input", "meta_train", "plot"]
