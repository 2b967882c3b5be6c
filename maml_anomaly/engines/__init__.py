"""Engines that run the same scoring function somewhere else than in this process.

``local`` (the default) is the embedded path in :mod:`maml_anomaly.pipeline`. ``ray`` runs
:func:`maml_anomaly.pipeline.score_batch` (daily-score, backtest) and
:func:`maml_anomaly.pipeline.summarise_batch` (fit-clusters) on Ray Data workers
(:mod:`.ray_engine`, optional extra ``maml-anomaly[ray]``). Engines only move whole series to
workers and rows or summaries back: the scoring and the period detection know nothing about them.
"""

ENGINES = ("local", "ray")
RAY_INSTALL = 'pip install "maml-anomaly[ray]"'

__all__ = ["ENGINES", "RAY_INSTALL"]
