"""WeakMedSAM's sub-class exploration (docs/methods.md §5, step 1): k-means sub-classes of each parent class.

For each parent class ``c`` the slices positive for ``c`` are clustered into at most ``K`` groups on a fixed image
embedding (the workflow uses SAM's pooled image embedding of each slice). The child target of a slice has
``C * K + 1`` entries: entry 0 means "negative for every parent", entry ``1 + c * K + j`` means "positive for ``c``
and in cluster ``j`` of ``c``"; a slice positive for several parents has one child entry per positive parent.

Choices made here (the paper leaves them open or they follow from using SAM's embedding):

- **Features are L2-normalised per row by default** (``normalize=True``) before clustering, i.e. clusters by
  direction (cosine similarity), not by norm: the norm of a pooled embedding mostly follows slice-wide intensity
  and contrast, which is not what a sub-class should be. The authors clustered raw ResNet-18 features; pass
  ``normalize=False`` to do the same. Assignment of new rows uses the same space as the clustering.
- **k is clipped** to the number of distinct positive rows (after normalisation), so k-means never asks for more
  clusters than there are points; the ``k`` of each class is kept in :attr:`SubclassResult.clusters_per_class`.
- **A class without any positive slice gets no children** (``k = 0``, a warning is issued): its ``K`` child
  entries stay 0 for every slice, while the child layout keeps its ``C * K + 1`` entries, so the network's heads
  do not depend on which classes a split happens to contain. A new row positive only for such a class has an
  all-zero child target (no child entry, and entry 0 is not set because the row is positive).
- **Cluster ids are canonical**: numbered in the order of their first member row, so the ids do not depend on
  k-means' internal labelling.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans

__all__ = ["SubclassResult", "assign_subclasses", "explore_subclasses"]

_FORMAT = "weakmedsam-subclasses/1"
_NORM_EPS = 1e-12


def _as_array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be array-like, got {type(value).__name__}.") from err


def _check_features(features: Any) -> np.ndarray:
    array = _as_array(features, "features")
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"features must be [N, F] with N, F >= 1, got shape {array.shape}.")
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise ValueError(f"features must be numeric, got dtype {array.dtype}.")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError("features must be finite (found NaN or inf).")
    return array


def _check_labels(parent_labels: Any, rows: int) -> np.ndarray:
    """``[N, C]`` bool from 0/1 labels; ``[N]`` is read as one class."""
    array = _as_array(parent_labels, "parent_labels")
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] != rows or array.shape[1] < 1:
        raise ValueError(f"parent_labels must be [N, C] with N = {rows} (rows of features), got shape {array.shape}.")
    is_binary = array.dtype == bool or (np.issubdtype(array.dtype, np.number) and np.isin(array, (0, 1)).all())
    if not is_binary:
        raise ValueError("parent_labels must hold only 0 and 1 (slice-level presence of each class).")
    return array.astype(bool)


def _space(features: np.ndarray, normalize: bool) -> np.ndarray:
    """The space k-means runs in: rows scaled to unit length when ``normalize`` (all-zero rows stay zero)."""
    if not normalize:
        return features
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, _NORM_EPS)


def _child_targets(clusters: np.ndarray, negative: np.ndarray, num_subclasses: int) -> np.ndarray:
    """``[N, C*K + 1]`` float32 from ``clusters [N, C]`` (-1: no child) and the rows negative for every parent."""
    rows, num_classes = clusters.shape
    targets = np.zeros((rows, num_classes * num_subclasses + 1), dtype=np.float32)
    targets[negative, 0] = 1.0
    for c in range(num_classes):
        members = np.flatnonzero(clusters[:, c] >= 0)
        targets[members, 1 + c * num_subclasses + clusters[members, c]] = 1.0
    return targets


@dataclass
class SubclassResult:
    """The sub-classes found by :func:`explore_subclasses`.

    Attributes:
        child_targets: ``[N, C * K + 1]`` float32 0/1 child targets of the clustered rows.
        clusters: ``[N, C]`` int64: the cluster of each row within each parent class, -1 where the row is negative.
        centres: per class, the ``[k_c, F]`` float64 centres in the clustering space (``[0, F]`` for a class
            without positives).
        clusters_per_class: the ``k_c`` used per class: ``min(K, distinct positive rows)``, 0 without positives.
        num_subclasses: ``K``, the child slots per class in the layout (even where ``k_c < K``).
        feature_dim: ``F``.
        normalize: whether rows were L2-normalised before clustering (and must be before assignment).
        seed: the k-means ``random_state``.
    """

    child_targets: np.ndarray
    clusters: np.ndarray
    centres: list[np.ndarray]
    clusters_per_class: tuple[int, ...]
    num_subclasses: int
    feature_dim: int
    normalize: bool = True
    seed: int = 0

    @property
    def num_classes(self) -> int:
        """``C``."""
        return len(self.clusters_per_class)

    @property
    def num_children(self) -> int:
        """``C * K + 1``, the child logits of :class:`~bundle.networks.parent_child.ParentChildClassifier`."""
        return self.num_classes * self.num_subclasses + 1

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (lists, ints, floats, bools); the child targets are not stored since they follow from
        ``clusters`` (a clustered row is negative for every parent exactly when all its clusters are -1).
        Floats are written in full, so :meth:`from_json` restores the centres exactly."""
        return {
            "format": _FORMAT,
            "num_subclasses": int(self.num_subclasses),
            "feature_dim": int(self.feature_dim),
            "normalize": bool(self.normalize),
            "seed": int(self.seed),
            "clusters_per_class": [int(k) for k in self.clusters_per_class],
            "centres": [np.asarray(c, dtype=np.float64).tolist() for c in self.centres],
            "clusters": np.asarray(self.clusters, dtype=np.int64).tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SubclassResult:
        """Rebuild a result from :meth:`to_json`'s dict.

        Raises:
            ValueError: a dict of another format or with inconsistent fields.
        """
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a sub-class record of format {_FORMAT!r} (got {found!r}).")
        num_subclasses, feature_dim = int(data["num_subclasses"]), int(data["feature_dim"])
        per_class = tuple(int(k) for k in data["clusters_per_class"])
        centres = [np.asarray(c, dtype=np.float64).reshape(-1, feature_dim) for c in data["centres"]]
        clusters = np.asarray(data["clusters"], dtype=np.int64).reshape(-1, len(per_class))
        if len(centres) != len(per_class) or any(len(c) != k for c, k in zip(centres, per_class)):
            raise ValueError(f"centres do not match clusters_per_class {list(per_class)}.")
        if clusters.size and ((clusters < -1).any() or (clusters >= np.asarray(per_class)[None, :]).any()):
            raise ValueError("clusters must be -1 or a cluster id below the class's clusters_per_class.")
        targets = _child_targets(clusters, (clusters < 0).all(axis=1), num_subclasses)
        normalize, seed = bool(data["normalize"]), int(data["seed"])
        return cls(targets, clusters, centres, per_class, num_subclasses, feature_dim, normalize, seed)


def explore_subclasses(
    features: np.ndarray | torch.Tensor,
    parent_labels: np.ndarray | torch.Tensor,
    num_subclasses: int = 8,
    seed: int = 0,
    normalize: bool = True,
) -> SubclassResult:
    """K-means sub-classes of each parent class and the child targets of every row.

    Args:
        features: ``[N, F]``, one row per slice (e.g. SAM's pooled image embedding).
        parent_labels: ``[N, C]`` 0/1 slice-level labels (``[N]`` for one class; bool accepted).
        num_subclasses: ``K``, the most clusters per class.
        seed: ``random_state`` of k-means (10 initialisations); the result is deterministic for a seed.
        normalize: L2-normalise each row before clustering (see the module notes).

    Returns:
        a :class:`SubclassResult` for the ``N`` rows.

    Raises:
        ValueError: shapes that do not fit, non-finite features, labels other than 0/1, ``num_subclasses < 1``.

    Warns:
        UserWarning: for each class without any positive row (it gets no children).
    """
    if int(num_subclasses) < 1:
        raise ValueError(f"num_subclasses must be >= 1, got {num_subclasses}.")
    num_subclasses = int(num_subclasses)
    raw = _check_features(features)
    labels = _check_labels(parent_labels, raw.shape[0])
    space = _space(raw, normalize)
    rows, num_classes = labels.shape
    clusters = np.full((rows, num_classes), -1, dtype=np.int64)
    centres: list[np.ndarray] = []
    per_class: list[int] = []
    for c in range(num_classes):
        members = np.flatnonzero(labels[:, c])
        if members.size == 0:
            warnings.warn(f"class {c} has no positive row: it gets no sub-classes.", UserWarning, stacklevel=2)
            centres.append(np.zeros((0, raw.shape[1])))
            per_class.append(0)
            continue
        points = space[members]
        k = min(num_subclasses, len(np.unique(points, axis=0)))
        model = KMeans(n_clusters=k, random_state=int(seed), n_init=10).fit(points)
        # renumber clusters by first member row, so ids do not depend on k-means' arbitrary labelling
        _, first = np.unique(model.labels_, return_index=True)
        order = np.argsort(first)
        rename = np.empty(k, dtype=np.int64)
        rename[order] = np.arange(k)
        clusters[members, c] = rename[model.labels_]
        centres.append(np.asarray(model.cluster_centers_, dtype=np.float64)[order])
        per_class.append(k)
    targets = _child_targets(clusters, ~labels.any(axis=1), num_subclasses)
    return SubclassResult(
        targets, clusters, centres, tuple(per_class), num_subclasses, raw.shape[1], bool(normalize), int(seed)
    )


def assign_subclasses(
    features: np.ndarray | torch.Tensor,
    parent_labels: np.ndarray | torch.Tensor,
    result: SubclassResult,
) -> np.ndarray:
    """Child targets of rows that were not clustered (e.g. validation slices): each positive class's nearest centre.

    Rows are mapped into the clustering space first (L2-normalised when ``result.normalize``); distances are
    Euclidean there, as in k-means. A row positive for a class without centres gets no child entry for it.

    Args:
        features: ``[N, F]`` with the ``F`` of ``result``.
        parent_labels: ``[N, C]`` 0/1 with the ``C`` of ``result`` (``[N]`` for one class).
        result: the output of :func:`explore_subclasses` (or :meth:`SubclassResult.from_json`).

    Returns:
        ``[N, C * K + 1]`` float32 0/1 child targets, laid out as in :func:`explore_subclasses`.

    Raises:
        ValueError: shapes that do not fit ``result``, non-finite features, labels other than 0/1.
    """
    raw = _check_features(features)
    if raw.shape[1] != result.feature_dim:
        raise ValueError(f"features have {raw.shape[1]} columns, the sub-classes were found on {result.feature_dim}.")
    labels = _check_labels(parent_labels, raw.shape[0])
    if labels.shape[1] != result.num_classes:
        raise ValueError(f"parent_labels have {labels.shape[1]} classes, the sub-classes have {result.num_classes}.")
    space = _space(raw, result.normalize)
    clusters = np.full(labels.shape, -1, dtype=np.int64)
    for c, centres in enumerate(result.centres):
        members = np.flatnonzero(labels[:, c])
        if members.size == 0 or len(centres) == 0:
            continue
        points = space[members]
        # |x - m|^2 without the |x|^2 term (the same for every centre of a row): no [N, k, F] array in memory
        distances = (centres**2).sum(axis=1)[None, :] - 2.0 * points @ centres.T
        clusters[members, c] = distances.argmin(axis=1)
    return _child_targets(clusters, ~labels.any(axis=1), result.num_subclasses)
