"""Group series by period, then by the shape of their cycle (sklearn-style fit / predict).

1. Every distinct period is a group; aperiodic series (period 0) form cluster ``p0``.
2. A period group of at least ``2 * min_cluster_size`` series whose cycle shapes vary is split
   by k-means (k-means++ seeding with a fixed seed, numpy) on the z-normalised mean cycle (``cycle_profiles``; long
   periods averaged into at most ``MAX_BINS`` bins). k grows from 2 while each extra cluster
   cuts the remaining inertia by at least ``SPLIT_GAIN``, up to ``max_subclusters`` and at most
   one cluster per ``min_cluster_size`` series. Sub-clusters smaller than ``min_cluster_size``
   are merged into their nearest sibling. Names: ``p24`` when not split, else ``p24-0``,
   ``p24-1``, ... by decreasing size (ties by centroid values), so reruns name alike.
3. Small period groups: a group of at least ``MIN_OWN_CLUSTER`` series (and any group when
   there is no larger one) keeps its own cluster ``p<period>``; a smaller one joins the
   largest cluster of the nearest period group (nearest on a log scale). Its series keep their
   own period in the output: only the cluster name is shared.

Profiles are folded on the last column of the matrix, so shapes compare by phase relative to
the end of the window (series of one step group that end together, as in a daily batch).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from maml_anomaly.core.periodicity import cycle_profiles, detect_periods

__all__ = ["PeriodClusterer", "assign_clusters", "profile_bins", "step_tag"]

FORMAT_VERSION = 1
MAX_BINS = 48  # long cycles are compared on at most this many phase bins
SPLIT_GAIN = 0.2  # an extra sub-cluster must cut the remaining inertia by 20%
MIN_OWN_CLUSTER = 5  # a small period group keeps its own cluster from this many series
FIT_SAMPLE = 10_000  # rows used to choose k and fit k-means in one period group


def step_tag(step_seconds: float) -> str:
    """A short name for a sampling step, used to prefix cluster names when steps differ: 1h, 5min, 1D."""
    for unit, secs in (("D", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if step_seconds >= secs and step_seconds % secs == 0:
            return f"{int(step_seconds // secs)}{unit}"
    return f"{step_seconds:g}s"


def profile_bins(period: int) -> int:
    """Phase bins of the cycle shape that sub-clusters a period group."""
    return min(period, MAX_BINS)


def _name(period: int, sub: int | None = None) -> str:
    return f"p{period}" if sub is None else f"p{period}-{sub}"


class PeriodClusterer:
    """Clusters of series by period and cycle shape.

    Learned: ``labels_`` (S,) object array of cluster names; ``clusters_`` a DataFrame with one
    row per cluster (cluster, period, size, shape_split); ``centroids_`` {period: (k, bins)
    float array} for split groups with ``centroid_names_`` {period: [names]}; ``assign_``
    {period: cluster} for period groups that are not split (merged small groups included).
    """

    def __init__(self, *, min_cluster_size: int = 50, max_subclusters: int = 8, seed: int = 0):
        if min_cluster_size < 1 or max_subclusters < 1:
            raise ValueError("min_cluster_size and max_subclusters must be at least 1")
        self.min_cluster_size = int(min_cluster_size)
        self.max_subclusters = int(max_subclusters)
        self.seed = int(seed)

    # ------------------------------------------------------------------ fit
    def fit(self, matrix: np.ndarray, periods: np.ndarray) -> "PeriodClusterer":
        x = np.asarray(matrix, dtype=np.float64)  # (S, T)
        per = np.asarray(periods, dtype=np.int64)  # (S,)
        if x.ndim != 2 or per.shape != (x.shape[0],):
            raise ValueError(f"matrix (S, T) and periods (S,) expected, got {x.shape} and {per.shape}")
        return self.fit_profiles(per, lambda p, rows: cycle_profiles(x[rows], p, bins=profile_bins(p)))

    def fit_profiles(self, periods: np.ndarray, profiles) -> "PeriodClusterer":
        """``fit`` from cycle shapes computed elsewhere (streamed fit-clusters keeps only those).

        ``profiles(p, rows)`` returns ``cycle_profiles(matrix[rows], p, bins=profile_bins(p))``:
        (len(rows), bins) for the series ``rows`` (increasing) whose period is p. It is called
        only for period groups large enough to be split by shape.
        """
        per = np.asarray(periods, dtype=np.int64)  # (S,)
        labels = np.empty(per.shape[0], dtype=object)
        self.centroids_: dict[int, np.ndarray] = {}
        self.centroid_names_: dict[int, list[str]] = {}
        self.assign_: dict[int, str] = {}
        uniq, counts = np.unique(per, return_counts=True)
        big = {int(p) for p, c in zip(uniq, counts) if p > 0 and c >= self.min_cluster_size}
        for p, c in zip(uniq.tolist(), counts.tolist()):
            rows = np.flatnonzero(per == p)
            if p == 0:
                self.assign_[0] = _name(0)
                labels[rows] = _name(0)
            elif p in big and c >= 2 * self.min_cluster_size:
                labels[rows] = self._fit_shapes(profiles(p, rows), p)
            elif p in big or c >= MIN_OWN_CLUSTER or not big:
                self.assign_[p] = _name(p)
                labels[rows] = _name(p)
        for p in uniq.tolist():  # tiny groups join a neighbour
            if p > 0 and p not in self.assign_ and p not in self.centroids_:
                target = self._nearest_group(p, big)
                self.assign_[p] = self._largest_cluster(target, labels, per)
                labels[per == p] = self.assign_[p]
        self.labels_ = labels
        self.clusters_ = self._summary(labels, per)
        return self

    def _fit_shapes(self, prof: np.ndarray, p: int) -> np.ndarray:
        """Sub-cluster one period group by cycle shape (its profiles (r, bins)); returns the names of its rows."""
        rng = np.random.default_rng(self.seed)
        sample = prof if len(prof) <= FIT_SAMPLE else prof[np.sort(rng.choice(len(prof), FIT_SAMPLE, replace=False))]
        k_max = min(self.max_subclusters, len(prof) // self.min_cluster_size)
        inertia_prev = float(((sample - sample.mean(0)) ** 2).sum())
        model = None
        for k in range(2, k_max + 1):
            centers, inertia = _kmeans(sample, k, seed=self.seed)
            if inertia > (1.0 - SPLIT_GAIN) * inertia_prev:
                break
            model, inertia_prev = centers, inertia
        if model is None:
            self.assign_[p] = _name(p)
            return np.full(len(prof), _name(p), dtype=object)
        centroids = model  # (k, bins)
        lab = _nearest(prof, centroids)
        centroids, lab = self._merge_small(prof, centroids, lab)
        order = self._stable_order(centroids, lab)
        centroids = centroids[order]
        lab = np.argsort(order)[lab]
        if len(centroids) == 1:
            self.assign_[p] = _name(p)
            return np.full(len(prof), _name(p), dtype=object)
        names = [_name(p, i) for i in range(len(centroids))]
        self.centroids_[p] = centroids
        self.centroid_names_[p] = names
        return np.asarray(names, dtype=object)[lab]

    def _merge_small(self, prof: np.ndarray, centroids: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fold sub-clusters under min_cluster_size into their nearest sibling, smallest first."""
        while len(centroids) > 1:
            sizes = np.bincount(lab, minlength=len(centroids))
            j = int(np.argmin(sizes))
            if sizes[j] >= self.min_cluster_size:
                break
            keep = np.arange(len(centroids)) != j
            centroids = centroids[keep]
            lab = _nearest(prof, centroids)
            centroids = np.stack(
                [prof[lab == i].mean(0) if (lab == i).any() else centroids[i] for i in range(len(centroids))]
            )
            lab = _nearest(prof, centroids)
        return centroids, lab

    @staticmethod
    def _stable_order(centroids: np.ndarray, lab: np.ndarray) -> np.ndarray:
        """Sub-cluster order: decreasing size, ties by rounded centroid values."""
        sizes = np.bincount(lab, minlength=len(centroids))
        keys = [(-int(sizes[i]), tuple(np.round(centroids[i], 6))) for i in range(len(centroids))]
        return np.array(sorted(range(len(centroids)), key=lambda i: keys[i]), dtype=np.int64)

    @staticmethod
    def _nearest_group(p: int, groups: set[int]) -> int:
        cands = sorted(q for q in groups if q != p)
        if not cands:
            return p
        return min(cands, key=lambda q: (abs(np.log(q / p)), q))

    def _largest_cluster(self, p: int, labels: np.ndarray, per: np.ndarray) -> str:
        if p in self.assign_:
            return self.assign_[p]
        names, counts = np.unique(labels[per == p].astype(str), return_counts=True)
        return str(names[np.argmax(counts)]) if len(names) else _name(p)

    @staticmethod
    def _summary(labels: np.ndarray, per: np.ndarray) -> pd.DataFrame:
        df = pd.DataFrame({"cluster": labels.astype(str), "period": per})
        g = df.groupby("cluster", sort=True)
        out = pd.DataFrame({"size": g.size(), "periods": g["period"].agg(lambda s: sorted(set(s.tolist())))})
        out["period"] = [int(pd.Series(df.loc[df.cluster == c, "period"]).mode().iloc[0]) for c in out.index]
        out["shape_split"] = out.index.str.contains("-")
        return out.reset_index()[["cluster", "period", "size", "periods", "shape_split"]]

    # -------------------------------------------------------------- predict
    def predict(self, matrix: np.ndarray, periods: np.ndarray) -> np.ndarray:
        """Cluster names (S,) for series, seen or not, from their matrix rows and periods."""
        self._check_fitted()
        x = np.asarray(matrix, dtype=np.float64)
        per = np.asarray(periods, dtype=np.int64)
        out = np.empty(per.shape[0], dtype=object)
        known = sorted(set(self.assign_) | set(self.centroids_))
        for p in np.unique(per).tolist():
            rows = np.flatnonzero(per == p)
            q = p if p in known else self._nearest_known(p, known)
            if q in self.centroids_:
                if q == p:
                    prof = cycle_profiles(x[rows], p, bins=self.centroids_[p].shape[1])
                    lab = _nearest(prof, self.centroids_[p])
                    out[rows] = np.asarray(self.centroid_names_[p], dtype=object)[lab]
                else:  # unseen period: shapes do not compare across periods
                    out[rows] = self.centroid_names_[q][0]
            else:
                out[rows] = self.assign_[q]
        return out

    @staticmethod
    def _nearest_known(p: int, known: list[int]) -> int:
        periodic = [q for q in known if q > 0]
        if p == 0 or not periodic:
            return 0 if 0 in known else periodic[0]
        return min(periodic, key=lambda q: (abs(np.log(q / p)), q))

    def _check_fitted(self) -> None:
        if not hasattr(self, "assign_"):
            raise RuntimeError("PeriodClusterer is not fitted: call fit() or from_dict() first")

    # -------------------------------------------------------------- state
    def to_dict(self) -> dict:
        """Plain JSON-able state: parameters, period -> cluster map, centroids as lists."""
        self._check_fitted()
        return {
            "format_version": FORMAT_VERSION,
            "params": {
                "min_cluster_size": self.min_cluster_size,
                "max_subclusters": self.max_subclusters,
                "seed": self.seed,
            },
            "assign": [{"period": int(p), "cluster": c} for p, c in sorted(self.assign_.items())],
            "shape_groups": [
                {
                    "period": int(p),
                    "clusters": list(self.centroid_names_[p]),
                    "centroids": self.centroids_[p].round(8).tolist(),
                }
                for p in sorted(self.centroids_)
            ],
            "clusters": self.clusters_.to_dict(orient="records") if hasattr(self, "clusters_") else [],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PeriodClusterer":
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"clusterer state format {d.get('format_version')!r} is not "
                f"{FORMAT_VERSION}: refit the clusters with this version"
            )
        self = cls(**d["params"])
        self.assign_ = {int(a["period"]): str(a["cluster"]) for a in d["assign"]}
        self.centroids_ = {int(g["period"]): np.asarray(g["centroids"], np.float64) for g in d["shape_groups"]}
        self.centroid_names_ = {int(g["period"]): [str(n) for n in g["clusters"]] for g in d["shape_groups"]}
        self.clusters_ = pd.DataFrame(d.get("clusters", []))
        return self


def assign_clusters(
    state: dict, matrix: np.ndarray, step_seconds: float, *, min_strength: float = 0.2, max_period: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(period (S,), cluster (S,)) for series of one step that fit-clusters never saw.

    ``state`` is the model directory's clusterer.json ({"step_groups": [{"step_seconds",
    "prefix", "clusterer"}]}); ``matrix`` the series' recent history (``Panel.tail_matrix``).
    The period is detected from that history (0 when it is too short or has no cycle); a step
    that was never fitted uses the group of the nearest step (on a log scale).
    """
    groups = state.get("step_groups", [])
    if not groups:
        raise ValueError("clusterer state has no step groups: fit-clusters saw no series with a step")
    g = min(groups, key=lambda g: (abs(np.log(g["step_seconds"] / step_seconds)), g["step_seconds"]))
    model = PeriodClusterer.from_dict(g["clusterer"])
    found = detect_periods(matrix, step_seconds, max_period=max_period, min_strength=min_strength)
    names = model.predict(matrix, found.period)
    if g["prefix"]:
        uniq, inverse = np.unique(names.astype(str), return_inverse=True)
        names = np.asarray([g["prefix"] + n for n in uniq], dtype=object)[inverse]
    return found.period, names


def _nearest(prof: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (squared Euclidean) for each profile row."""
    d = (prof * prof).sum(1)[:, None] - 2.0 * prof @ centroids.T + (centroids * centroids).sum(1)[None, :]
    return d.argmin(1)


def _kmeans(x: np.ndarray, k: int, *, seed: int, n_init: int = 2, max_iter: int = 30) -> tuple[np.ndarray, float]:
    """Lloyd's k-means with k-means++ seeding, best of n_init; numpy only, deterministic.

    (scikit-learn's OpenMP k-means busy-waits on a shared 2-core machine; these inputs are at
    most FIT_SAMPLE x MAX_BINS, so plain numpy is fast enough.) Returns (centers (k, d), inertia).
    """
    x = np.asarray(x, np.float64)  # (n, d)
    rng = np.random.default_rng(seed)
    sq = (x * x).sum(1)  # (n,)
    best, best_inertia = None, np.inf
    for _ in range(n_init):
        centers = _kmeans_pp(x, sq, k, rng)
        for _ in range(max_iter):
            d = sq[:, None] - 2.0 * x @ centers.T + (centers * centers).sum(1)[None, :]  # (n, k)
            lab = d.argmin(1)
            onehot = np.eye(k)[lab]  # (n, k)
            counts = onehot.sum(0)
            sums = onehot.T @ x  # (k, d)
            new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centers)
            shift = float(np.abs(new - centers).max())
            centers = new
            if shift < 1e-6:
                break
        d = sq[:, None] - 2.0 * x @ centers.T + (centers * centers).sum(1)[None, :]
        inertia = float(np.maximum(d.min(1), 0.0).sum())
        if inertia < best_inertia:
            best, best_inertia = centers, inertia
    return best, best_inertia


def _kmeans_pp(x: np.ndarray, sq: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next center drawn with probability proportional to distance^2."""
    centers = [x[rng.integers(len(x))]]
    d2 = np.maximum(sq - 2.0 * x @ centers[0] + centers[0] @ centers[0], 0.0)  # (n,)
    for _ in range(1, k):
        total = d2.sum()
        i = rng.integers(len(x)) if total <= 0 else rng.choice(len(x), p=d2 / total)
        centers.append(x[i])
        d2 = np.minimum(d2, np.maximum(sq - 2.0 * x @ x[i] + x[i] @ x[i], 0.0))
    return np.stack(centers)
