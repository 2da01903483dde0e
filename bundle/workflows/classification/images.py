"""TensorBoard panels of SAMAug-C validation samples: image, prior map, augmented image and per-branch Grad-CAM.

A fixed set of validation samples is shown every validation: the first ``n_per_class`` positive and negative
samples met in the first run (the validation loader is not shuffled, so the same ones come back). For 3D samples the
middle axial slice is shown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.data import decollate_batch
from monai.handlers import TensorBoardHandler
from monai.utils import IgniteInfo, min_version, optional_import

from bundle.distributed import is_main_process
from bundle.networks.grad_cam import branch_grad_cam
from bundle.workflows.common.ddp import unwrap
from bundle.workflows.common.handlers import to_unit_range

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["ClassifierImageLogger"]


def _is_positive(label: torch.Tensor) -> bool:
    label = torch.as_tensor(label)
    return bool(label.max() > 0.5) if label.ndim else int(label) > 0


def _plane(volume: torch.Tensor) -> torch.Tensor:
    """``[H, W]`` of a ``[H, W]`` or ``[H, W, D]`` channel (the middle axial slice)."""
    return volume[..., volume.shape[-1] // 2] if volume.ndim == 3 else volume


class ClassifierImageLogger(TensorBoardHandler):
    """Write the panels of a fixed set of validation samples at every validation run.

    Tags ``{tag_prefix}/{pos|neg}{k}/{image|prior_<kind>|augmented|gradcam_<branch>}``; global step = the
    evaluator's ``state.epoch`` (the trainer's epoch under ``ValidationHandler``).

    Args:
        network: the :class:`~bundle.networks.DualBranchClassifier` (for Grad-CAM).
        summary_writer: shared writer; default a new one in ``log_dir``.
        log_dir: folder of a new writer.
        n_per_class: samples per group (positive / negative).
        input_key, image_key, prior_key, aug_key, label_key: batch keys.
        prior_names: names of the prior channels.
        tag_prefix: first part of every tag.
    """

    def __init__(self, network: torch.nn.Module, summary_writer: Any = None, log_dir: str = "./runs",
                 n_per_class: int = 4, input_key: str = "cls_input", image_key: str = "image",
                 prior_key: str = "image_prior", aug_key: str = "image_aug", label_key: str = "class_label",
                 prior_names: Sequence[str] | None = None, tag_prefix: str = "val") -> None:
        super().__init__(summary_writer=summary_writer, log_dir=log_dir)
        self.network = network
        self.n_per_class = int(n_per_class)
        self.input_key, self.image_key, self.prior_key = input_key, image_key, prior_key
        self.aug_key, self.label_key = aug_key, label_key
        self.prior_names = list(prior_names) if prior_names is not None else None
        self.tag_prefix = tag_prefix
        self.chosen: dict[tuple, str] = {}  # (case_id, slice_index) -> panel name, fixed at the first run
        self._frozen = False

    def attach(self, engine) -> None:
        """Write at ``ITERATION_COMPLETED``, freeze the set at the end."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._finish)

    def _finish(self, engine=None) -> None:
        self._frozen = True
        self._writer.flush()

    def _select(self, key: tuple, positive: bool) -> str | None:
        if key in self.chosen:
            return self.chosen[key]
        if self._frozen:
            return None
        group = "pos" if positive else "neg"
        count = sum(name.startswith(group) for name in self.chosen.values())
        if count >= self.n_per_class:
            return None
        self.chosen[key] = f"{group}{count}"
        return self.chosen[key]

    def __call__(self, engine) -> None:
        """Write the panels of this batch's chosen samples (rank 0's share under ``torchrun``: rank 0 alone logs)."""
        if not is_main_process():
            return
        batch = engine.state.batch
        if isinstance(batch, Mapping):  # an evaluator built with decollate=False
            batch = decollate_batch(batch)
        step = int(engine.state.epoch)
        for data in batch:
            if self.input_key not in data:
                continue
            index = data.get("slice_index")
            name = self._select((str(data.get("case_id")), -1 if index is None else int(index)),
                                _is_positive(data[self.label_key]))
            if name is not None:
                self._write(name, data, step)

    def _write(self, name: str, data: Mapping, step: int) -> None:
        prefix = f"{self.tag_prefix}/{name}"
        panels = [("image", data[self.image_key][0])]
        if self.prior_key in data:
            prior = data[self.prior_key]
            names = self.prior_names or [str(k) for k in range(prior.shape[0])]
            panels += [(f"prior_{n}", c) for n, c in zip(names, prior)]
        if self.aug_key in data:
            panels.append(("augmented", data[self.aug_key][0]))
        network = unwrap(self.network)  # Grad-CAM of this rank's copy, outside DDP's gradient exchange
        device = next(network.parameters()).device
        x = torch.as_tensor(data[self.input_key])[None].float().to(device)
        with torch.enable_grad():
            cams = branch_grad_cam(network, x)
        for branch, cam in zip(network.branch_names, cams):
            panels.append((f"gradcam_{branch}", cam[0, 0]))
        for tag, image in panels:
            plane = _plane(torch.as_tensor(image).detach().float().cpu())
            self._writer.add_image(f"{prefix}/{tag}", to_unit_range(plane)[None], step, dataformats="CHW")
