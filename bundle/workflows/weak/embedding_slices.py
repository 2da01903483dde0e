"""Samples of the SAM-encoder classifiers: a slice's cached SAM image embedding, or its SAM-window slice.

The ``sam_features`` stage stores, with ``with_embeddings``, the whole image embedding of every slice SAM ran on
(:meth:`bundle.workflows.weak.features.SamSliceFeatures.image_embeddings`); the ``sam_frozen`` classifier
(:class:`~bundle.networks.embedding_classifier.EmbeddingClassifier`) trains on them, so the slices go through the
image encoder once in the whole pipeline. The ``sam_lora`` classifier tunes the encoder, so it takes the slices as SAM
sees them (:class:`WindowSlices`). Slices SAM did not run on (no foreground in the SAM window: air, outside the
body) have no embedding: they are not training samples, and the pseudo-label stage gives them probability 0.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bundle.workflows.weak.slices import TARGET_KEY

__all__ = ["EmbeddingSlices", "WindowSlices", "case_embeddings"]

logger = logging.getLogger(__name__)


def case_embeddings(features, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings [S, E, rows, cols] float16, row of each slice [D] int64, -1 where SAM did not run)``."""
    ran = np.asarray(features.sam_slices(case_id), bool)
    embeddings = features.image_embeddings(case_id)
    if len(embeddings) != int(ran.sum()):
        raise ValueError(f"case {case_id}: {len(embeddings)} cached embeddings for {int(ran.sum())} SAM slices")
    rows = np.full(len(ran), -1, np.int64)
    rows[ran] = np.arange(int(ran.sum()))
    return embeddings, rows


class _CaseSlices(torch.utils.data.Dataset):
    """Slice items over per-case arrays ``{case_id: (array [S, ...], row of each slice [D], -1: none)}``: the items
    whose slice has a row, each sample the row's image (:meth:`_image`) with the item's target."""

    def _keep(self, cases: dict[str, tuple[np.ndarray, np.ndarray]], items: Sequence[Mapping], what: str) -> None:
        self._cases = cases
        self.items = [dict(item) for item in items if self._row(item) >= 0]
        dropped = len(items) - len(self.items)
        positive = sum(1 for item in items if self._row(item) < 0 and np.any(np.asarray(item["class_label"]) > 0))
        if positive:  # the SAM window found no foreground on a slice labelled positive
            logger.warning("%s: %d positive slice(s) have no foreground in the SAM window and are left out", what,
                           positive)
        if dropped:
            logger.info("%s: %d of %d slices have no foreground in the SAM window and are left out", what, dropped,
                        len(items))

    def set_items(self, items: Sequence[Mapping]) -> _CaseSlices:
        """Replace the items by the same slices with other fields (their targets, known once the sub-class stage has
        run); ``items`` may include the slices left out (no foreground in the SAM window): they stay out.

        Raises:
            ValueError: the slices kept are not the dataset's, in order.
        """
        kept = [dict(item) for item in items if self._row(item) >= 0]
        key = lambda item: (str(item["case_id"]), int(item["slice_index"]))  # noqa: E731
        if [key(i) for i in kept] != [key(i) for i in self.items]:
            raise ValueError(f"{type(self).__name__}: the new items are not the dataset's {len(self.items)} slices")
        self.items = kept
        return self

    def _row(self, item: Mapping) -> int:
        _, rows = self._cases[str(item["case_id"])]
        index = int(item["slice_index"])
        return int(rows[index]) if 0 <= index < len(rows) else -1

    def _image(self, array: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        array, _ = self._cases[str(item["case_id"])]
        return {"image": self._image(array[self._row(item)]),
                TARGET_KEY: torch.as_tensor(item[TARGET_KEY], dtype=torch.float32),
                "case_id": str(item["case_id"]), "slice_index": int(item["slice_index"])}


class EmbeddingSlices(_CaseSlices):
    """The cached SAM image embeddings of slice items, ``{"image": [E, g, g] float32, "target": [...], ...}``.

    Every case's embeddings file is verified once, when the dataset is built, and memory-mapped: a sample reads its
    slice (float16, about 2 MB for LiteMedSAM) from disk, so the training set need not fit in memory. Embeddings of another grid than the largest one (a case whose slices are not square)
    are resized bilinearly to it, so that any slices batch together; the classifier pools and its CAM is per slice,
    so this only changes the aspect of non-square slices, as the ResNet path's ``roi_size`` resize does.

    Args:
        features: the :class:`~bundle.workflows.weak.features.SamSliceFeatures` stage, built ``with_embeddings``.
        items: slice items (``case_id``, ``slice_index``, ``class_label``, ``target``) of
            :func:`~bundle.workflows.weak.slices.with_targets`.
    """

    def __init__(self, features, items: Sequence[Mapping]) -> None:
        cases = {case_id: case_embeddings(features, case_id)
                 for case_id in dict.fromkeys(str(item["case_id"]) for item in items)}
        self._keep(cases, items, "frozen-encoder classifier")
        shapes = [arr.shape[-2:] for arr, _ in cases.values() if len(arr)]
        self.grid = tuple(int(s) for s in max(shapes)) if shapes else (1, 1)

    def _image(self, array: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(array.astype(np.float32))
        if tuple(x.shape[-2:]) != self.grid:
            x = F.interpolate(x[None], size=self.grid, mode="bilinear", align_corners=False)[0]
        return x


class WindowSlices(_CaseSlices):
    """The SAM-window slices of slice items, ``{"image": [3, H, W] float32 in [0, 1], "target": [...], ...}``: the
    input of the ``sam_lora`` classifier, which runs SAM's encoder itself.

    Each case is loaded once (``sam_loader``) and its slices are cut with the features stage's window, exactly as the
    ``sam_features`` stage saw them, held as uint8. Slices SAM did not run on (no foreground in the window) are left
    out, as for :class:`EmbeddingSlices`.

    Args:
        features: the :class:`~bundle.workflows.weak.features.SamSliceFeatures` stage (its ``window``).
        entries: the datalist entries of the items' cases (``case_id``, ``image``).
        items: slice items with targets (:func:`~bundle.workflows.weak.slices.with_targets`).
        sam_loader: transform giving a case's channel-first, RAS volume under ``image``.
    """

    def __init__(self, features, entries: Sequence[Mapping], items: Sequence[Mapping], sam_loader) -> None:
        wanted = set(str(item["case_id"]) for item in items)
        cases: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        window = features.window
        for entry in entries:
            if str(entry["case_id"]) not in wanted:
                continue
            image = sam_loader({k: v for k, v in entry.items() if k != "label"})["image"]
            fitted = window.fit(image)
            keep = window.nonempty(image, fitted)
            rows = np.full(len(keep), -1, np.int64)
            rows[keep] = np.arange(int(keep.sum()))
            slices = window.slices(image, fitted, np.flatnonzero(keep)) if keep.any() else np.zeros((0, 1, 1, 3))
            cases[str(entry["case_id"])] = (np.asarray(slices, np.uint8), rows)
        missing = wanted - set(cases)
        if missing:
            raise ValueError(f"slice items of cases with no entry: {sorted(missing)[:3]}")
        self._keep(cases, items, "LoRA classifier")

    def _image(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0
