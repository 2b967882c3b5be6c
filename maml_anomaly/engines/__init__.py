"""Engines: where the per-batch functions of :mod:`maml_anomaly.batch` run; never what they compute.

One interface, :class:`~.base.Engine`: ``map_batches(fn, payload, source, codec)`` reads ``source``
as batches of whole series, calls ``fn(payload, frame)`` on each and yields the results (a remote
engine sends them back through ``codec``). ``local``
(:mod:`.local`: the streamed reader, a pool of spawned processes) and ``ray``
(:mod:`.ray_engine`: Ray Data workers grouped by a stable hash of the series id; optional extra
``maml-anomaly[ray]``) implement it. Commands choose an engine with :func:`get_engine`.
"""

from __future__ import annotations

from maml_anomaly.config import Config
from maml_anomaly.engines.base import RAY_INSTALL, Engine, Source
from maml_anomaly.errors import ConfigError

ENGINES = ("local", "ray")


def get_engine(name: str, config: Config, *, address: str | None = None, processes: int = 1) -> Engine:
    """The engine called ``name`` (ConfigError for an unknown one, or Ray missing)."""
    if name not in ENGINES:
        raise ConfigError(f"--engine must be local or ray; found {name!r}.")
    if address is not None and name != "ray":
        raise ConfigError("--ray-address joins a Ray cluster, which only --engine ray uses; add --engine ray.")
    if name == "ray":
        from maml_anomaly.engines.ray_engine import RayEngine

        return RayEngine(config, address=address)
    from maml_anomaly.engines.local import LocalEngine

    return LocalEngine(threads=config.runtime.threads, processes=processes)


__all__ = ["ENGINES", "RAY_INSTALL", "Engine", "Source", "get_engine"]
