"""Engines that run the same scoring function somewhere else than in this process.

``local`` (the default) is the embedded path in :mod:`maml_anomaly.pipeline`. ``ray`` runs
:func:`maml_anomaly.pipeline.score_batch` on Ray Data workers (:mod:`.ray_engine`, optional
extra ``maml-anomaly[ray]``). Engines only move whole series to workers and rows back: the
scoring itself knows nothing about them.
"""

ENGINES = ("local", "ray")
RAY_INSTALL = 'pip install "maml-anomaly[ray]"'

__all__ = ["ENGINES", "RAY_INSTALL"]
