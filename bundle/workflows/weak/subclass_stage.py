"""WeakMedSAM stage 2: sub-class exploration, from cached SAM embeddings and slice labels to child targets.

The training split's positive slices are clustered per parent class (seeded k-means,
:func:`bundle.networks.subclasses.explore_subclasses`); validation slices get the nearest cluster of each of their
positive classes (:func:`bundle.networks.subclasses.assign_subclasses`). The result is one JSON file written
atomically, with the signature of what made it (feature partition, task, K, seed, training cases): a later run with
the same signature reuses it, anything else recomputes it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bundle.atomic import write_text_atomic
from bundle.hashing import json_sha256
from bundle.networks.subclasses import assign_subclasses, explore_subclasses
from bundle.workflows.weak.features import SamSliceFeatures
from bundle.workflows.weak.slices import parent_labels

__all__ = ["SubclassTargets", "slice_features"]

logger = logging.getLogger(__name__)


def slice_features(features: SamSliceFeatures, items: Sequence[Mapping]) -> np.ndarray:
    """``[N, F]`` pooled SAM embeddings of slice items, read from the feature cache (one file per case)."""
    by_case: dict[str, np.ndarray] = {}
    rows = []
    for item in items:
        case_id = str(item["case_id"])
        if case_id not in by_case:
            by_case[case_id] = features.embeddings(case_id)
        rows.append(by_case[case_id][int(item["slice_index"])])
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)


class SubclassTargets:
    """Child targets of every training and validation slice, computed once and kept in ``path``.

    Args:
        path: the JSON file (``<output_dir>/subclasses.json``).
        features: the SAM feature stage (its cache holds the pooled embeddings).
        task: the task name.
        extractor: None: cluster the pooled SAM embeddings (default); else a
            :class:`~bundle.workflows.weak.extractors.NetworkFeatures` (the user's network and weights).
        num_subclasses: ``K`` clusters per parent class (WeakMedSAM: 8).
        seed: the k-means seed.
    """

    def __init__(self, path: str | os.PathLike, features: SamSliceFeatures, task: str, num_subclasses: int = 8,
                 seed: int = 0, extractor=None) -> None:
        self.path = Path(path)
        self.extractor = extractor
        self.features, self.task = features, task
        self.num_subclasses, self.seed = int(num_subclasses), int(seed)

    def slice_features(self, items: Sequence[Mapping]) -> np.ndarray:
        """``[N, F]`` features of slice items from the chosen source."""
        return self.extractor(items) if self.extractor is not None else slice_features(self.features, items)

    def signature(self, train_items: Sequence[Mapping]) -> dict:
        cases = sorted({str(i["case_id"]) for i in train_items})
        source = self.extractor.signature() if self.extractor is not None else self.features.cache.digest
        return {"features": source, "task": self.task, "num_subclasses": self.num_subclasses,
                "seed": self.seed, "training_cases_sha256": json_sha256(cases)}

    def _stored(self, signature: Mapping) -> dict | None:
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return stored if isinstance(stored, dict) and stored.get("signature") == dict(signature) else None

    def _current(self, train_items: Sequence[Mapping], other_items: Sequence[Mapping]) -> dict | None:
        """The stored record when it was made from these training items and covers the other items too."""
        stored = self._stored(self.signature(train_items))
        if stored is None or any(_key(i) not in stored["targets"] for i in other_items):
            return None
        return stored

    def read(self, train_items: Sequence[Mapping], other_items: Sequence[Mapping] = ()) -> dict:
        """The record :meth:`ensure` wrote for these items, never computing it (the ranks of a ``torchrun`` job other
        than 0, once rank 0 has written it).

        Raises:
            FileNotFoundError: ``path`` holds no record for these items.
        """
        stored = self._current(train_items, other_items)
        if stored is None:
            raise FileNotFoundError(f"{self.path}: no sub-class record for these training and validation slices; run "
                                    "the 'subclasses' stage")
        return stored

    def ensure(self, train_items: Sequence[Mapping], other_items: Sequence[Mapping] = ()) -> dict:
        """Child targets keyed ``"<case_id>/<slice_index>"`` -> list of active child indices; computed if needed."""
        stored = self._current(train_items, other_items)
        if stored is not None:
            logger.info("sub-classes: reusing %s", self.path)
            return stored
        signature = self.signature(train_items)
        train_parents = parent_labels(train_items, self.task)
        if not train_parents.size or not train_parents.any():
            raise ValueError(f"task {self.task!r}: the training split has no positive slice; sub-class exploration "
                             "(and the classifier) need slices with the class present.")
        result = explore_subclasses(self.slice_features(train_items), train_parents,
                                    self.num_subclasses, self.seed)
        targets = {_key(i): np.flatnonzero(t).tolist() for i, t in zip(train_items, result.child_targets)}
        if other_items:
            other = assign_subclasses(self.slice_features(other_items),
                                      parent_labels(other_items, self.task), result)
            targets.update({_key(i): np.flatnonzero(t).tolist() for i, t in zip(other_items, other)})
        record = {"signature": signature, "result": result.to_json(), "num_outputs": int(result.child_targets.shape[1]),
                  "targets": targets}
        write_text_atomic(self.path, json.dumps(record))
        logger.info("sub-classes: %s clusters per class (%s) -> %s", result.clusters_per_class, self.task, self.path)
        return record

    @staticmethod
    def child_targets(record: Mapping, items: Sequence[Mapping]) -> np.ndarray:
        """``[N, C * K + 1]`` 0/1 child targets of items from an :meth:`ensure` record."""
        out = np.zeros((len(items), int(record["num_outputs"])), np.float32)
        for row, item in enumerate(items):
            out[row, record["targets"][_key(item)]] = 1.0
        return out


def _key(item: Mapping) -> str:
    return f"{item['case_id']}/{int(item['slice_index'])}"
