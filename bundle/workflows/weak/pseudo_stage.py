"""WeakMedSAM stage 4: CAMs refined by the prompt-affinity random walk into pseudo-label volumes.

For every slice of a case: the classifier's CAMs and parent probabilities (slices resized to the classifier's
``roi_size``); the CAMs resized to the affinity grid; for the slices the classifier calls positive,
:func:`bundle.priors.random_walk.random_walk` with the cached SAM logit map ``M``; then upsampling, Gaussian blur,
zeroing of negative classes and thresholding (:func:`bundle.priors.pseudo_labels.pseudo_label_slice`). The same path
without the walk (the CAM alone) is kept next to it, so the walk's contribution is measured on every run.

The pseudo labels are written as label NIfTIs in the image file's own voxel grid and affine (the RAS-oriented result
is turned back with nibabel's orientation tools), class ``c`` written as the label value that reads back as that class
through the task's label groups (:func:`bundle.priors.pseudo_labels.class_values_for_groups`), so the segmentation
workflow reads them like ground truth. They live in a :class:`bundle.priors.cache.PriorCache` partition whose
signature holds the classifier file's sha256, the SAM feature partition and every walk / blur / threshold setting;
each case is written atomically and skipped on a rerun when current and verified (each file's size and sha256, as
every cache entry: :mod:`bundle.priors.cache`); a damaged label file is written again, or refused naming it where
the cache is read-only. Ground truth is read only by :func:`pseudo_label_quality`, after the labels exist.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.utils import look_up_option

from bundle.data.case_ids import case_id_of
from bundle.data.writers import to_file_grid
from bundle.hashing import path_sha256
from bundle.priors.cache import PriorCache
from bundle.priors.pseudo_labels import class_map_to_label, class_values_for_groups, pseudo_label_slice
from bundle.priors.random_walk import BORDER_MODES, TRANSITIONS, random_walk
from bundle.workflows.common.seg_metrics import dice
from bundle.workflows.weak.classifier import load_classifier
from bundle.workflows.weak.embedding_slices import case_embeddings
from bundle.workflows.weak.features import SamSliceFeatures, entry_files
from bundle.workflows.weak.slices import class_groups

__all__ = ["CAM_KIND", "PSEUDO_KIND", "PseudoLabels", "pseudo_label_quality"]

logger = logging.getLogger(__name__)

PSEUDO_KIND = "pseudo_label"
"""Pseudo labels from CAM + random walk (what the segmentation network trains on)."""
CAM_KIND = "cam_label"
"""The same pipeline without the random walk: the CAM alone, for comparison."""


def _walk_option(name: str, value, options: Sequence[str]) -> str:
    """``value`` when it is one of ``options``; else one line naming the config option and the closest valid value."""
    try:
        return look_up_option(value, options)
    except ValueError as error:
        raise ValueError(f"{name}: " + " ".join(str(error).split())) from None


class PseudoLabels:
    """Pseudo-label volumes of datalist cases from a trained classifier and cached SAM features.

    Args:
        features: the SAM feature stage (logit maps ``M``; with the ``cam_peaks`` placement its miner decodes
            prompts placed on the CAMs here).
        classifier_path: the classifier file of :class:`bundle.workflows.weak.classifier.ClassifierRun`.
        cache_dir: the cache folder (one partition per configuration).
        beta, steps, radius, border, transition: random-walk settings (METHODS.md §5: 4, 4, 5, every pixel,
            ``column`` = ``A D^-1`` as the authors' code, the default; ``row`` = ``D^-1 A``, the usual form); an unknown
            border or transition is refused here, before any work.
        kernel_size, sigma: Gaussian blur after upsampling (21, 3.5).
        blur_frame: 0: blur at the slice's size (``sigma`` in its pixels); ``N``: in an ``N x N`` frame, the label
            resized back by nearest neighbour (the authors: 256); see
            :func:`~bundle.priors.pseudo_labels.pseudo_label_slice`.
        threshold: foreground threshold of a binary task's refined map (0.5).
        background_threshold: multi-class: a pixel is background when no class map exceeds it (0.5).
        positive_threshold: a slice is positive for a class when the classifier's probability exceeds it.
        logit_scale: ``M`` is multiplied by this before the affinity ``exp(-|M_u - M_v|)``; 1 is the authors'.
        batch_size: slices per classifier forward pass.
        device: the classifier's device.
    """

    def __init__(self, features: SamSliceFeatures, classifier_path: str | os.PathLike, cache_dir: str | os.PathLike,
                 beta: float = 4.0, steps: int = 4, radius: int = 5, border: str = "all", kernel_size: int = 21,
                 sigma: float = 3.5, transition: str = "column", threshold: float = 0.5,
                 background_threshold: float = 0.5, positive_threshold: float = 0.5, logit_scale: float = 1.0,
                 batch_size: int = 16, blur_frame: int = 0, device="cpu") -> None:
        self.features = features
        self.classifier_path = os.fspath(classifier_path)
        # part of the cache signature: labels of another walk are never reused
        self.walk = {"beta": float(beta), "steps": int(steps), "radius": int(radius),
                     "border": _walk_option("walk_border", border, BORDER_MODES),
                     "transition": _walk_option("walk_transition", transition, TRANSITIONS)}
        if not float(logit_scale) > 0:
            raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
        self.logit_scale = float(logit_scale)
        self.blur = {"kernel_size": int(kernel_size), "sigma": float(sigma)}
        if isinstance(blur_frame, bool) or int(blur_frame) != blur_frame or blur_frame < 0:
            raise ValueError(f"blur_frame: {blur_frame!r} is not 0 (the slice's size) or a positive frame size")
        if blur_frame:  # only then: the labels of the native blur keep their cache key
            self.blur["frame"] = int(blur_frame)
        self.threshold, self.background_threshold = float(threshold), float(background_threshold)
        self.positive_threshold = float(positive_threshold)
        self.batch_size, self.device = int(batch_size), torch.device(device)
        self.cache_dir = cache_dir
        self._network = self._card = self._cache = None

    def _load(self) -> None:
        if self._network is None:
            if not os.path.isfile(self.classifier_path):
                raise FileNotFoundError(f"{self.classifier_path}: no trained classifier; run the 'classifier' stage")
            self._network, self._card = load_classifier(self.classifier_path, self.device)

    @property
    def card(self) -> dict:
        self._load()
        return self._card

    @property
    def cache(self) -> PriorCache:
        if self._cache is None:
            self._cache = PriorCache(self.cache_dir, self.signature(), label="pseudo-labels",
                                     what="WeakMedSAM pseudo-label cache")
        return self._cache

    def signature(self) -> dict:
        """Everything that changes the pseudo labels: classifier file, SAM features, every setting."""
        return {"weak_pseudo_labels": 1, "classifier_sha256": path_sha256(self.classifier_path),
                "features": self.features.cache.digest, "walk": self.walk, "blur": self.blur,
                "threshold": self.threshold, "background_threshold": self.background_threshold,
                "positive_threshold": self.positive_threshold, "logit_scale": self.logit_scale,
                "kinds": [PSEUDO_KIND, CAM_KIND]}

    @property
    def groups(self) -> dict[str, tuple[int, ...]]:
        return class_groups(self.card["task"])

    @torch.no_grad()
    def cams(self, image: torch.Tensor, case_id: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cams [D, C, a, a] on the affinity grid, probabilities [D, C])`` of a ``[Cin, H, W, D]`` volume.

        A ``resnet`` classifier sees the volume's slices resized to its ``roi_size``; a ``sam_frozen`` one the cached
        SAM image embeddings of case ``case_id`` (no encoder run), and the slices SAM did not run on (no foreground)
        get probability 0 and an empty CAM.
        """
        self._load()
        kind = self._card["network"].get("kind")
        if kind == "sam_frozen":
            return self._embedding_cams(case_id, int(image.shape[-1]))
        if kind == "sam_lora":
            cams, probs, _ = self._tuned_sam_maps(image)  # image: the volume SAM sees (sam_loader)
            return cams, probs
        roi = [int(s) for s in self._card["roi_size"]]
        size = self.features.miner.affinity_size
        volume = torch.as_tensor(image).float().permute(3, 0, 1, 2)  # [D, Cin, H, W]
        cams, probs = [], []
        for start in range(0, volume.shape[0], self.batch_size):
            x = F.interpolate(volume[start : start + self.batch_size].to(self.device), size=roi, mode="bilinear",
                              align_corners=False)
            parent, _ = self._network(x)
            probs.append(torch.sigmoid(parent).cpu())
            cams.append(self._network.cam(x, size=(size, size)).cpu())  # min-max per map, on the affinity grid
        return torch.cat(cams), torch.cat(probs)

    def _embedding_cams(self, case_id: str | None, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        if case_id is None:
            raise ValueError("the sam_frozen classifier's CAMs come from a case's cached embeddings: give its case_id")
        embeddings, rows = case_embeddings(self.features, case_id)
        if len(rows) != depth:
            raise ValueError(f"case {case_id}: the cached SAM features have {len(rows)} slices, the volume {depth}")
        size = self.features.miner.affinity_size
        num_classes = self._network.num_classes
        cams, probs = torch.zeros(depth, num_classes, size, size), torch.zeros(depth, num_classes)
        ran = np.flatnonzero(rows >= 0)
        for start in range(0, len(ran), self.batch_size):
            chunk = ran[start : start + self.batch_size]
            x = torch.from_numpy(embeddings[rows[chunk]].astype(np.float32)).to(self.device)
            feats = self._network.features(x)  # eval mode (load_classifier), no graph (cams)
            parent, _ = self._network.logits(feats)
            probs[chunk] = torch.sigmoid(parent).cpu()
            cams[chunk] = self._network.scaled_cam(feats, (size, size)).cpu()  # the embedding grid covers the slice
        return cams, probs

    def refine(self, image, case_id: str, rgb_source=None) -> dict[str, np.ndarray]:
        """Per-slice maps of a case: ``cams``, ``probabilities``, ``logits`` (M), ``refined`` and the class maps
        ``pseudo`` / ``cam`` (``[H, W, D]`` int64, 0 = background, c + 1 = class c), in the oriented grid."""
        self._load()
        if self._card["network"].get("kind") == "sam_lora":  # one tuned-encoder pass gives the CAMs and M
            cams, probs, maps = self._tuned_sam_maps(rgb_source if rgb_source is not None else image)
        else:
            cams, probs = self.cams(image, case_id)
            if self.features.with_maps:
                maps = torch.from_numpy(self.features.maps(case_id))  # [a, a, D]
            else:
                maps = self._cam_peak_maps(rgb_source if rgb_source is not None else image, cams)
        depth, num_classes = probs.shape
        h, w = int(image.shape[1]), int(image.shape[2])
        positive = (probs > self.positive_threshold).numpy()
        refined = cams.clone()
        pseudo = np.zeros((h, w, depth), np.int64)
        cam_only = np.zeros((h, w, depth), np.int64)
        multi = num_classes > 1
        for d in np.flatnonzero(positive.any(axis=1)):
            refined[d] = random_walk(maps[..., d] * self.logit_scale, cams[d], **self.walk)
            for out, source in ((pseudo, refined[d]), (cam_only, cams[d])):
                label = pseudo_label_slice(source, positive[d], (h, w), threshold=self.threshold,
                                           background_threshold=self.background_threshold, multi_class=multi,
                                           **self.blur)
                label = np.asarray(label)
                out[..., d] = label.astype(np.int64) if multi else label[0].astype(np.int64)
        return {"cams": cams.numpy(), "probabilities": probs.numpy(), "logits": maps.numpy(),
                "refined": refined.numpy(), "pseudo": pseudo, "cam": cam_only}

    @torch.no_grad()
    def _tuned_sam_maps(self, image) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(cams, probabilities, M)`` of a ``sam_lora`` classifier: each slice SAM runs on goes through the tuned
        encoder once, whose embedding gives the CAM (heads) and ``M`` (SAM's prompt decoder, the miner's prompts);
        the other slices get probability 0, an empty CAM and ``M = 0``, as in the ``sam_features`` stage."""
        features, network = self.features, self._network
        fitted = features.window.fit(image)
        keep = features.window.nonempty(image, fitted)
        size, depth = features.miner.affinity_size, int(image.shape[-1])
        cams = torch.zeros(depth, network.num_classes, size, size)
        probs, maps = torch.zeros(depth, network.num_classes), torch.zeros((size, size, depth))
        level = features.window.foreground_level * 255.0
        for start in range(0, int(keep.sum()), features.slices_per_batch):
            chunk = np.flatnonzero(keep)[start : start + features.slices_per_batch]
            rgb = features.window.slices(image, fitted, chunk)
            x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float().div(255.0).to(self.device)
            embedding = network.embed(x)
            feats = network.features_of_embedding(embedding, rgb.shape[1:3])
            parent, _ = network.logits(feats)
            probs[chunk] = torch.sigmoid(parent).cpu()
            cams[chunk] = network.scaled_cam(feats, (size, size)).cpu()
            slice_cams = None
            if features.miner.placement == "cam_peaks":
                slice_cams = F.interpolate(cams[chunk], size=rgb.shape[1:3], mode="bilinear", align_corners=False)
                slice_cams = slice_cams.numpy()
            m = features.miner.logit_maps_from_embeddings(network.slice_embeddings(embedding, rgb.shape[1:3]),
                                                          cams=slice_cams, foreground=rgb.max(axis=-1) > level)
            maps[..., chunk] = m.float().cpu().permute(1, 2, 0)
        return cams, probs, maps

    def _cam_peak_maps(self, image, cams: torch.Tensor) -> torch.Tensor:
        """``M`` for the ``cam_peaks`` placement: prompts at the CAM maxima of each slice (one embedding per slice)."""
        features = self.features
        fitted = features.window.fit(image)
        keep = features.window.nonempty(image, fitted)
        size = features.miner.affinity_size
        maps = torch.zeros((size, size, cams.shape[0]))
        for start in range(0, int(keep.sum()), features.slices_per_batch):
            chunk = np.flatnonzero(keep)[start : start + features.slices_per_batch]
            rgb = features.window.slices(image, fitted, chunk)
            slice_cams = F.interpolate(cams[chunk], size=rgb.shape[1:3], mode="bilinear", align_corners=False)
            m = features.miner.logit_maps(rgb, cams=slice_cams.numpy())
            maps[..., chunk] = m.float().cpu().permute(1, 2, 0)
        return maps

    def ensure(self, entry: Mapping, loader, image_key: str = "image", sam_loader=None) -> tuple | None:
        """Write the pseudo labels of one entry unless current.

        Returns:
            None when the cached labels are current, else ``(image, maps)``: the classifier's input volume and
            :meth:`refine`'s maps, so a caller can draw them without computing them again.

        Args:
            loader: transform giving the classifier's input volume (load, orient, intensity scaling).
            sam_loader: transform giving the volume SAM sees (load, orient; only for the ``cam_peaks`` placement).
        """
        case_id = case_id_of(entry, image_key)
        sources = [*entry_files(entry, image_key), self.classifier_path]
        if not self.cache.must_compute(case_id, sources):
            return None
        start = time.perf_counter()
        image = loader({k: v for k, v in entry.items() if k != "label"})[image_key]
        rgb_source = None
        if not self.features.with_maps:
            rgb_source = (sam_loader or loader)({k: v for k, v in entry.items() if k != "label"})[image_key]
        maps = self.refine(image, case_id, rgb_source)
        values = class_values_for_groups(list(self.groups.values()))
        file_affine = np.asarray(image.meta.get("original_affine", image.affine), np.float64)
        volumes = [to_file_grid(np.asarray(class_map_to_label(maps[k], values)), image.affine, file_affine)
                   for k in ("pseudo", "cam")]
        prior = MetaTensor(torch.from_numpy(np.stack(volumes).astype(np.uint8)), affine=torch.as_tensor(file_affine),
                           meta={"channel_names": [PSEUDO_KIND, CAM_KIND]})
        self.cache.store(case_id, sources, prior, time.perf_counter() - start)
        return image, maps

    def label_file(self, case_id: str, kind: str = PSEUDO_KIND) -> str:
        """Absolute path of a case's pseudo-label NIfTI (a datalist elsewhere points at it), once verified.

        Raises:
            InputError: the file is not what its cache entry recorded (naming it).
        """
        return os.path.abspath(self.cache.file(case_id, kind))


def pseudo_label_quality(pseudo: PseudoLabels, entries: Sequence[Mapping], image_key: str = "image") -> dict:
    """Per-class 3D Dice of the pseudo labels (with and without the walk) against the entries' ground truth.

    The only place the weak pipeline reads label voxels, after the pseudo labels are written; entries without a
    ``label`` are skipped. An empty prediction of an empty truth scores 1.
    """
    groups = pseudo.groups
    cases, sums = [], {kind: {name: [] for name in groups} for kind in (PSEUDO_KIND, CAM_KIND)}
    for entry in entries:
        if not entry.get("label"):
            continue
        case_id = case_id_of(entry, image_key)
        truth = np.asanyarray(nib.load(str(entry["label"])).dataobj)
        record = {"case_id": case_id}
        for kind in (PSEUDO_KIND, CAM_KIND):
            pred = np.asanyarray(nib.load(pseudo.label_file(case_id, kind)).dataobj)
            if pred.shape != truth.shape[: pred.ndim]:
                raise ValueError(f"{entry['label']}: shape {truth.shape} differs from its pseudo label {pred.shape}")
            for name, values in groups.items():
                score = dice(np.isin(pred, values), np.isin(truth.reshape(pred.shape), values))
                record[f"{kind}/{name}"] = score
                sums[kind][name].append(score)
        cases.append(record)
    means = {kind: {name: (float(np.mean(v)) if v else None) for name, v in per.items()} for kind, per in sums.items()}
    return {"metric": "3D Dice per class against the ground truth (empty vs empty = 1)", "kinds": {
        PSEUDO_KIND: "CAM + SAM prompt-affinity random walk", CAM_KIND: "CAM alone (same blur and threshold)"},
        "pseudo_labels": {"partition": os.path.abspath(pseudo.cache.cache_dir),
                          "settings": pseudo.cache.signature["prior"]},
        "mean": means, "cases": cases}
