"""Configuration: frozen dataclasses, defaults < TOML file (``--config``) < command-line flags.

The TOML file has one table per section, named as the attributes of :class:`Config`::

    [columns]
    id_col = "series"

    [train]
    k_shot = 32
    hidden = [64, 64]

Every key is checked: an unknown section or key, or a value of the wrong type, is a
:class:`~maml_anomaly.errors.ConfigError` naming the key, the expected type and the file.
Command-line flags are given as a dict of ``{field: value}`` (or ``{"section.field": value}``)
where ``None`` means "not given"; field names are unique across sections.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from maml_anomaly.errors import ConfigError

ON_DUPLICATE = ("error", "first", "last", "mean")
DEVICES = ("auto", "cpu", "cuda")
DIRECTIONS = ("both", "up", "down")


@dataclass(frozen=True)
class ColumnConfig:
    """Names of the three input columns; output files always use unique_id, ds, y."""

    id_col: str = "unique_id"
    time_col: str = "ds"
    value_col: str = "y"

    def __post_init__(self) -> None:
        names = (self.id_col, self.time_col, self.value_col)
        if any(not n for n in names):
            raise ConfigError(f"column names must not be empty; found {names}.")
        if len(set(names)) != 3:
            raise ConfigError(f"--id-col, --time-col and --value-col must name three different columns; found {names}.")


@dataclass(frozen=True)
class InputConfig:
    """How to read the input: duplicate (unique_id, ds) rows, and rows slightly off their grid.

    snap_tolerance: 0 keeps only rows exactly on a series' grid (others go to Panel.off_grid);
    f in (0, 0.5] moves a row within f * step of a free grid point onto it.
    """

    on_duplicate: str = "error"
    snap_tolerance: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("input.on_duplicate", self.on_duplicate, ON_DUPLICATE)
        _check_range("input.snap_tolerance", self.snap_tolerance, 0.0, 0.5)


@dataclass(frozen=True)
class ClusterConfig:
    """fit-clusters: period detection and grouping."""

    min_cluster_size: int = 50
    max_subclusters: int = 8
    min_strength: float = 0.2
    max_period: int = 0  # 0 = automatic

    def __post_init__(self) -> None:
        _check_min("clusters.min_cluster_size", self.min_cluster_size, 1)
        _check_min("clusters.max_subclusters", self.max_subclusters, 1)
        _check_range("clusters.min_strength", self.min_strength, 0.0, 1.0)
        _check_min("clusters.max_period", self.max_period, 0)


@dataclass(frozen=True)
class TrainConfig:
    """meta-train: MAML hyper-parameters (names as in the meta-learning literature)."""

    k_shot: int = 24
    k_per_period: bool = False  # true: K = one period of points in clusters with a period (docs/detector.md)
    inner_steps: int = 5
    inner_lr: float = 0.01
    learn_inner_lr: bool = True
    meta_batch_size: int = 32
    meta_lr: float = 0.001
    iterations: int = 2000
    first_order: bool = False
    seed: int = 0
    hidden: tuple[int, ...] = (40, 40)
    time_budget_s: float = 300.0

    def __post_init__(self) -> None:
        _check_min("train.k_shot", self.k_shot, 1)
        _check_min("train.inner_steps", self.inner_steps, 0)
        _check_positive("train.inner_lr", self.inner_lr)
        _check_min("train.meta_batch_size", self.meta_batch_size, 1)
        _check_positive("train.meta_lr", self.meta_lr)
        _check_min("train.iterations", self.iterations, 0)
        _check_min("train.seed", self.seed, 0)
        _check_positive("train.time_budget_s", self.time_budget_s)
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(
                f"train.hidden must be a non-empty list of positive layer sizes; found {list(self.hidden)}."
            )


@dataclass(frozen=True)
class ScoreConfig:
    """daily-score / backtest: flag threshold, batch size and the failure budget."""

    threshold: float = 3.0  # measured: 0.26% false alarms on clean sample points (docs/detector.md)
    batch_size: int = (
        4096  # tasks per adaptation chunk: 4096 peaked at 0.7 GB vs 1.6 GB for 20000, no slower (docs/performance.md)
    )
    max_failed_fraction: float = 0.05  # cron: fail when more than 5% of the expected series failed (docs/operations.md)
    inner_steps_at_scoring: int = (
        -1
    )  # -1: the trained inner steps; 0 scores the meta-init unadapted (what adaptation is worth)

    def __post_init__(self) -> None:
        _check_positive("score.threshold", self.threshold)
        _check_min("score.batch_size", self.batch_size, 1)
        _check_range("score.max_failed_fraction", self.max_failed_fraction, 0.0, 1.0)
        _check_min("score.inner_steps_at_scoring", self.inner_steps_at_scoring, -1)


@dataclass(frozen=True)
class AlertConfig:
    """daily-score / backtest: rules that turn flags into alerts (maml_anomaly.core.alerts); 0 = off.

    Each rule only removes flags: fdr (keep q_value <= fdr), max_alerts (the N most significant),
    deviation floors, direction (both, up, down) and min_consecutive grid points.
    """

    fdr: float = 0.0
    q_per_cluster: bool = False
    max_alerts: int = 0
    min_abs_deviation: float = 0.0
    min_rel_deviation: float = 0.0
    direction: str = "both"
    min_consecutive: int = 1

    def __post_init__(self) -> None:
        _check_range("alerts.fdr", self.fdr, 0.0, 1.0)
        _check_min("alerts.max_alerts", self.max_alerts, 0)
        _check_min("alerts.min_abs_deviation", self.min_abs_deviation, 0)
        _check_min("alerts.min_rel_deviation", self.min_rel_deviation, 0)
        _check_choice("alerts.direction", self.direction, DIRECTIONS)
        _check_min("alerts.min_consecutive", self.min_consecutive, 1)


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how compute runs (threads: one torch thread is often fastest on small cores).

    lock_timeout: seconds a run waits for another run's lock on the same model directory or
    output before it stops (0 = stop at once). keep_versions: trained model versions kept in a
    model directory, the serving one included; older ones are removed after each switch.
    """

    device: str = "auto"
    threads: int = 1
    lock_timeout: float = 0.0
    keep_versions: int = 3

    def __post_init__(self) -> None:
        _check_choice("runtime.device", self.device, DEVICES)
        _check_min("runtime.threads", self.threads, 1)
        _check_range("runtime.lock_timeout", self.lock_timeout, 0.0, 86400.0)
        _check_min("runtime.keep_versions", self.keep_versions, 1)


@dataclass(frozen=True)
class Config:
    """The whole configuration; stored in the model directory's manifest."""

    columns: ColumnConfig = field(default_factory=ColumnConfig)
    input: InputConfig = field(default_factory=InputConfig)
    clusters: ClusterConfig = field(default_factory=ClusterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    alerts: AlertConfig = field(default_factory=AlertConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None, flags: Mapping[str, Any] | None = None) -> Config:
        """Defaults, then the TOML file at ``path`` (if any), then ``flags`` (None = not given)."""
        config = cls.from_toml(path) if path is not None else cls()
        return config.replace_from_flags(flags or {})

    @classmethod
    def from_toml(cls, path: str | Path) -> Config:
        """Read a TOML file; every section and key is checked against the dataclasses."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"configuration file {path} does not exist (or is not a file); "
                "give --config the path of a TOML file, or leave the option out."
            )
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"configuration file {path} is not valid TOML: {exc}.") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "the configuration") -> Config:
        """Build from ``{section: {key: value}}``; missing keys keep their defaults."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a table of sections, found {type(data).__name__}.")
        sections = {f.name: f for f in fields(cls)}
        built = {}
        for name, values in data.items():
            if name not in sections:
                raise ConfigError(
                    f"{source}: unknown section [{name}]; expected one of {', '.join('[' + s + ']' for s in sections)}."
                )
            if not isinstance(values, Mapping):
                raise ConfigError(f"{source}: [{name}] must be a table of keys, found {type(values).__name__}.")
            built[name] = _build_section(_section_type(sections[name]), name, values, source)
        return cls(**built)

    def replace_from_flags(self, flags: Mapping[str, Any]) -> Config:
        """A copy with command-line flags applied; ``None`` values mean "not given"."""
        owners = _field_owners()
        changes: dict[str, dict[str, Any]] = {}
        for key, value in flags.items():
            if value is None:
                continue
            section, _, name = key.rpartition(".")
            if not section:
                if name not in owners:
                    raise ConfigError(f"unknown option {key!r}; expected one of {', '.join(sorted(owners))}.")
                section = owners[name]
            elif owners.get(name) != section:
                raise ConfigError(f"unknown option {key!r}.")
            changes.setdefault(section, {})[name] = value
        updated = {}
        for section, values in changes.items():
            current = dataclasses.asdict(getattr(self, section))
            current.update(values)
            updated[section] = _build_section(type(getattr(self, section)), section, current, "command-line options")
        return dataclasses.replace(self, **updated)

    # -- serialising ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain JSON-ready dict (tuples become lists)."""
        return {
            f.name: {
                k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(getattr(self, f.name)).items()
            }
            for f in fields(self)
        }


# -- helpers ---------------------------------------------------------------------------------


def _section_type(f: dataclasses.Field) -> type:
    return f.default_factory  # type: ignore[return-value]  # each section's factory is its class


def _field_owners() -> dict[str, str]:
    """field name -> section name (names are unique across sections)."""
    return {sub.name: f.name for f in fields(Config) for sub in fields(_section_type(f))}


def _build_section(cls: type, section: str, values: Mapping[str, Any], source: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown key {section}.{key}; [{section}] accepts {', '.join(sorted(known))}.")
        _check_type(f"{section}.{key}", value, hints[key], source)
    kwargs = dict(values)
    for key, hint in hints.items():
        if key in kwargs and hint is float:
            kwargs[key] = float(kwargs[key])
    return cls(**kwargs)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return "a list of integers"
    names = {int: "an integer", float: "a number", bool: "a boolean (true or false)", str: "a string"}
    return names.get(hint, str(hint))


def _check_type(key: str, value: Any, hint: Any, source: str) -> None:
    ok: bool
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is str:
        ok = isinstance(value, str)
    elif typing.get_origin(hint) is tuple:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    else:  # pragma: no cover - a new field type must be added above
        raise TypeError(f"unsupported config type {hint!r} for {key}")
    if not ok:
        raise ConfigError(f"{source}: {key} must be {_type_name(hint)}; found {value!r} ({type(value).__name__}).")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; found {value!r}.")


def _check_min(key: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"{key} must be at least {minimum}; found {value!r}.")


def _check_positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key} must be greater than 0; found {value!r}.")


def _check_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key} must be between {low} and {high}; found {value!r}.")


__all__ = [
    "ON_DUPLICATE",
    "DEVICES",
    "ColumnConfig",
    "InputConfig",
    "ClusterConfig",
    "TrainConfig",
    "ScoreConfig",
    "AlertConfig",
    "RuntimeConfig",
    "Config",
]
