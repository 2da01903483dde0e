"""The network input of the SAMAug-C classifier, and the batch preparation of its trainer and evaluator.

:class:`ClassifierInputd` turns one sample (image, its SAM prior) into what the configured branches see: ``[x, x_aug]``
for the dual network, ``x`` for the raw baseline, ``x_aug`` for the augmented one. With ``aug_as_samples`` a
single-branch network's training items carry a ``view`` (``raw`` / ``augmented``) that picks the image instead.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.transforms import MapTransform
from monai.utils import look_up_option

from bundle.networks.dual_branch import BRANCH_MODES, BRANCH_NAMES
from bundle.priors.cls_augment import SamAugCImage

__all__ = ["CLS_INPUT_KEY", "ClassifierInputd", "ClassifierPrepareBatch"]

CLS_INPUT_KEY = "cls_input"


class ClassifierInputd(MapTransform):
    """Write the classifier input ``[n_branches * C, *spatial]`` under ``output_key`` (and ``x_aug`` under
    ``aug_key`` when it is computed).

    Args:
        keys: the image key (one key).
        branches: ``dual`` / ``raw`` / ``augmented`` (:class:`bundle.networks.DualBranchClassifier`).
        mode: SAMAug-C augmentation mode (:class:`bundle.priors.cls_augment.SamAugCImage`).
        alpha: ``emphasis`` background factor.
        prior_names: names of the prior channels (slices cut from cached volumes carry no metadata).
        prior_key: key of the prior ``[K, *spatial]``.
        aug_key: key ``x_aug`` is written to.
        output_key: key of the network input.
        view_key: key of a sample's ``view`` (``raw`` / ``augmented``); for a single-branch network it overrides
            which image is used (the augmented images as extra training samples).

    Raises:
        ValueError: unknown ``branches`` / ``mode`` / ``view`` (naming the closest valid one).
    """

    def __init__(self, keys, branches: str = "dual", mode: str = "emphasis_min", alpha: float = 0.5,
                 prior_names: Sequence[str] | None = None, prior_key: str = "image_prior", aug_key: str = "image_aug",
                 output_key: str = CLS_INPUT_KEY, view_key: str = "view") -> None:
        super().__init__(keys)
        self.branches = look_up_option(branches, BRANCH_MODES)
        self.augment = SamAugCImage(mode=mode, alpha=alpha, prior_names=prior_names)
        self.prior_key, self.aug_key, self.output_key, self.view_key = prior_key, aug_key, output_key, view_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            views = list(BRANCH_NAMES[self.branches])
            if len(views) == 1 and d.get(self.view_key) is not None:
                views = [look_up_option(d[self.view_key], ("raw", "augmented"))]
            if "augmented" in views or self.prior_key in d:
                if self.prior_key not in d:
                    raise KeyError(f"{self.prior_key!r} not found: the augmented view needs the SAM prior of {key!r}.")
                d[self.aug_key] = self.augment(d[key], d[self.prior_key])
            parts = [d[key] if v == "raw" else d[self.aug_key] for v in views]
            d[self.output_key] = torch.cat([torch.as_tensor(p).float() for p in parts], dim=0)
        return d


class ClassifierPrepareBatch:
    """``prepare_batch`` of the trainer / evaluator: ``(batch[input_key], batch[label_key])`` on the device.

    Args:
        input_key: key of the network input (:class:`ClassifierInputd`).
        label_key: key of the class label (``[B]`` class indices or ``[B, K]`` multi-label).
    """

    def __init__(self, input_key: str = CLS_INPUT_KEY, label_key: str = "class_label") -> None:
        self.input_key, self.label_key = input_key, label_key

    def __call__(self, batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
        x = torch.as_tensor(batchdata[self.input_key]).to(device=device, non_blocking=non_blocking)
        label = batchdata.get(self.label_key)
        if label is not None:
            label = torch.as_tensor(label).to(device=device, non_blocking=non_blocking)
        return x, label
