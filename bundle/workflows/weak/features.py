"""WeakMedSAM stage 1: SAM features of every slice, computed once per case and cached.

One image-encoder run per non-empty axial slice gives both things the later stages need (docs/weak.md):

- the **pooled image embedding** (``[D, F]`` per case, one row per slice) that sub-class exploration clusters
  (:mod:`bundle.workflows.weak.subclass_stage`), instead of the authors' ImageNet ResNet-18 features, which cannot be
  downloaded here;
- the **prompt affinity logit map** ``M`` (``[1, a, a, D]`` per case on the affinity grid), the sum of SAM's
  single-mask logits for a grid of prompts (:class:`bundle.sam.prompt_affinity.PromptAffinityMiner`), from which the
  random walk takes its affinities.

Both are label-free and classifier-free, so they are computed once per SAM configuration and reused by every
classifier and every pseudo-label setting. They live in a :class:`bundle.priors.cache.PriorCache` partition keyed by
the SAM model, slice window and miner settings: ``pam_logits.<hex12>.nii.gz`` (the logit map as a NIfTI whose affine
puts the coarse grid where the slice is, so a viewer overlays it on the image) and ``pooled_embedding.<hex12>.npy``
(each named after its content; the entry records its size and sha256). Empty slices (air, outside the skull) are
not sent to SAM: their map and embedding are zero and ``sam_slices.<hex12>.npy`` says which slices were run. With
the ``cam_peaks`` placement ``M`` depends on the classifier's CAMs: then only the embeddings are cached here and the
pseudo-label stage decodes the prompts itself.

Every cached file is verified before it is used (:mod:`bundle.priors.cache`): a case whose files are not what its
entry recorded is computed again by this stage (refused, naming the file, where the cache is read-only), and
:meth:`SamSliceFeatures.check_cached` checks every case before the classifier trains, so a damaged feature file
stops the pipeline before that work rather than after it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor

from bundle.data.case_ids import case_id_of
from bundle.errors import InputError
from bundle.priors.cache import PriorCache
from bundle.sam.prompt_affinity import PromptAffinityMiner, embedding_cells, pooled_embedding
from bundle.sam.slices import SliceWindow

__all__ = ["EMBEDDING_ARRAY", "IMAGE_EMBEDDING_ARRAY", "PAM_KIND", "SAM_SLICES_ARRAY", "SamSliceFeatures",
           "entry_files", "grid_affine"]

logger = logging.getLogger(__name__)

PAM_KIND = "pam_logits"
EMBEDDING_ARRAY = "pooled_embedding"
SAM_SLICES_ARRAY = "sam_slices"
IMAGE_EMBEDDING_ARRAY = "image_embedding"
EMBEDDING_DIM = 256
"""Channels of every SAM image embedding (ViT-B/L/H, MedSAM, LiteMedSAM): the pooled feature's length."""


def entry_files(entry: Mapping, image_key: str = "image") -> list[str]:
    """The image file(s) of a datalist entry, as a list (the cache fingerprints them)."""
    files = entry[image_key]
    return [str(files)] if isinstance(files, (str, os.PathLike)) else [str(f) for f in files]


def grid_affine(affine, image_shape: Sequence[int], grid_shape: Sequence[int]) -> np.ndarray:
    """The affine of a coarse in-plane grid covering the same field of view as an image's slices.

    Voxel ``(i, j, k)`` of a ``grid_shape[0] x grid_shape[1]`` grid covers image pixels ``i * s .. (i + 1) * s`` along
    the first axis (``s = H / h``), so its centre is at image voxel ``(i + 0.5) * s - 0.5``; the slice axis is kept.
    """
    affine = np.asarray(affine, dtype=np.float64)
    sy, sx = image_shape[0] / grid_shape[0], image_shape[1] / grid_shape[1]
    scale = np.diag([sy, sx, 1.0, 1.0])
    scale[:3, 3] = [(sy - 1) / 2, (sx - 1) / 2, 0.0]
    return affine @ scale


class SamSliceFeatures:
    """Pooled SAM embeddings and prompt-affinity logit maps of every slice of a case, through a prior cache.

    Args:
        miner: the :class:`~bundle.sam.prompt_affinity.PromptAffinityMiner` (its engine runs the encoder).
        window: how slices become SAM input (a :class:`~bundle.sam.slices.SliceWindow` or its arguments).
        cache_dir: the cache folder; the partition is named after the SAM model and the configuration digest.
        slices_per_batch: slices embedded and decoded at once.
        with_maps: also decode the prompt grid (False for the ``cam_peaks`` placement, whose prompts come from CAMs).
        with_embeddings: also store every SAM slice's whole image embedding (``image_embedding.<hex12>.npy``,
            ``[S, E, rows, cols]`` float16 for the ``S`` slices SAM ran on, cropped to the cells over the slice), the
            input of the frozen-encoder classifier (:class:`~bundle.networks.embedding_classifier.EmbeddingClassifier`):
            about 2 MB per slice for LiteMedSAM's 256 x 64 x 64 embedding.
    """

    def __init__(self, miner: PromptAffinityMiner, window: SliceWindow | Mapping, cache_dir: str | os.PathLike,
                 slices_per_batch: int = 8, with_maps: bool = True, with_embeddings: bool = False) -> None:
        self.miner = miner
        self.window = window if isinstance(window, SliceWindow) else SliceWindow(**dict(window))
        if slices_per_batch < 1:
            raise ValueError(f"slices_per_batch must be >= 1, got {slices_per_batch}")
        self.slices_per_batch = int(slices_per_batch)
        self.with_maps = bool(with_maps)
        self.with_embeddings = bool(with_embeddings)
        self.cache = PriorCache(cache_dir, self.signature(), label=f"features-{miner.engine.info.model_type}",
                                what="WeakMedSAM feature cache")

    def signature(self) -> dict:
        """Everything that changes the cached features (never builds SAM)."""
        sig = {"weak_features": 1, "window": self.window.signature(), "kinds": [PAM_KIND] if self.with_maps else []}
        sig["miner" if self.with_maps else "engine"] = (self.miner.signature() if self.with_maps
                                                        else self.miner.engine.signature())
        if self.with_embeddings:  # only then: the partitions without them keep their digest
            sig["image_embeddings"] = "float16, cropped to the slice's cells"
        return sig

    def is_current(self, entry: Mapping, image_key: str = "image") -> bool:
        """True when the entry's features are cached for its image files and every cached file is verified."""
        return self.cache.is_current(case_id_of(entry, image_key), entry_files(entry, image_key))

    def check_cached(self, entries: Sequence[Mapping], image_key: str = "image") -> None:
        """Every entry's features are cached and verified (before work that needs them later, e.g. the classifier).

        Raises:
            InputError: naming the first file (or case folder) at fault, and the stage that computes it again.
        """
        for entry in entries:
            status = self.cache.status(case_id_of(entry, image_key), entry_files(entry, image_key))
            if not status.current:
                raise InputError(status.path, f"{status.problem}; run the 'sam_features' stage to compute the "
                                              "SAM features again")

    def compute(self, image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(maps [a, a, D] float32, embeddings [D, F] float32, sam_slices [D] bool)`` of a ``[C, H, W, D]`` volume."""
        return self._compute(image)[:3]

    def _compute(self, image) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`compute` and, with ``with_embeddings``, the ``[S, E, rows, cols]`` float16 image embeddings."""
        fitted = self.window.fit(image)
        keep = self.window.nonempty(image, fitted)
        depth = int(image.shape[-1])
        size = self.miner.affinity_size
        maps = np.zeros((size, size, depth), np.float32)
        embeddings = None
        whole = [] if self.with_embeddings else None
        level = self.window.foreground_level * 255.0
        for start in range(0, int(keep.sum()), self.slices_per_batch):
            chunk = np.flatnonzero(keep)[start : start + self.slices_per_batch]
            rgb = self.window.slices(image, fitted, chunk)
            emb = self.miner.engine.embed(rgb)
            pooled = pooled_embedding(emb).float().cpu().numpy()
            if embeddings is None:
                embeddings = np.zeros((depth, pooled.shape[1]), np.float32)
            embeddings[chunk] = pooled
            if whole is not None:
                rows, cols = embedding_cells(emb)
                whole.append(emb.embeddings[:, :, :rows, :cols].to(torch.float16).cpu().numpy())
            if self.with_maps:
                foreground = rgb.max(axis=-1) > level
                m = self.miner.logit_maps_from_embeddings(emb, foreground=foreground)
                maps[..., chunk] = m.float().cpu().numpy().transpose(1, 2, 0)
        if embeddings is None:  # no slice with foreground: nothing for SAM to see
            embeddings = np.zeros((depth, EMBEDDING_DIM), np.float32)
        if whole is not None:
            whole = np.concatenate(whole) if whole else np.zeros((0, embeddings.shape[1], 1, 1), np.float16)
        return maps, embeddings, keep, whole

    def ensure(self, entry: Mapping, loader, image_key: str = "image") -> bool:
        """Compute and store the features of one datalist entry unless they are current (verified); True when
        computed. A missing, stale or bad case of a read-only cache is refused naming the file."""
        if not self.cache.must_compute(case_id_of(entry, image_key), entry_files(entry, image_key)):
            return False
        start = time.perf_counter()
        image = loader(dict(entry))[image_key]
        maps, embeddings, keep, whole = self._compute(image)
        affine = grid_affine(image.affine, image.shape[1:3], maps.shape[:2]) if isinstance(image, MetaTensor) \
            else np.eye(4)
        data = maps[None] if self.with_maps else np.zeros((0, *maps.shape), np.float32)
        prior = MetaTensor(torch.from_numpy(data), affine=torch.as_tensor(affine),
                           meta={"channel_names": list(self.cache.kinds), "sam_prior_slices": int(keep.sum())})
        case_id = case_id_of(entry, image_key)
        arrays = {EMBEDDING_ARRAY: embeddings, SAM_SLICES_ARRAY: keep}
        if whole is not None:
            arrays[IMAGE_EMBEDDING_ARRAY] = whole
        self.cache.store(case_id, entry_files(entry, image_key), prior, time.perf_counter() - start, arrays=arrays)
        return True

    def maps(self, case_id: str) -> np.ndarray:
        """The cached ``[a, a, D]`` logit maps of a case."""
        return self.cache.load(case_id).numpy()[0]

    def embeddings(self, case_id: str) -> np.ndarray:
        """The cached ``[D, F]`` pooled embeddings of a case (zero rows for slices SAM did not see)."""
        return self.cache.load_array(case_id, EMBEDDING_ARRAY)

    def image_embeddings(self, case_id: str) -> np.ndarray:
        """The cached ``[S, E, rows, cols]`` float16 image embeddings of the slices SAM ran on (in slice order;
        :meth:`sam_slices` says which), stored with ``with_embeddings``.

        The file is verified, then memory-mapped (read-only): a slice is read from disk when it is used, so a
        training set of many cases (about 2 MB per slice) need not fit in memory. Cached files are named after their
        content and replaced by renaming, so a mapped file never changes under its reader.
        """
        if not self.with_embeddings:
            raise ValueError("the SAM features were configured without whole image embeddings (with_embeddings)")
        path = self.cache.file(case_id, IMAGE_EMBEDDING_ARRAY)
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InputError(path, f"cached array cannot be read ({type(err).__name__}: {err})") from err

    def sam_slices(self, case_id: str) -> np.ndarray:
        """The cached ``[D]`` flags of the slices SAM was run on."""
        return self.cache.load_array(case_id, SAM_SLICES_ARRAY)
