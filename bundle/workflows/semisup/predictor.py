"""A trained SAM-Mix model (or baseline) rebuilt from its folder alone, run slice by slice over volumes.

The folder holds ``model.pt`` (classifier or U-Net weights + the card that says what they are: method, organ, roi
size, intensity, SAM type and checkpoint sha256, LoRA rank, CAM threshold) and, for SAM-Mix, ``adapter.pt``.
:class:`SamMixPredictor` needs nothing else: the base SAM is found from the card (LiteMedSAM's packaged weights, or
the recorded checkpoint path, or ``sam_checkpoint`` given here) and checked against the recorded sha256.

Two box sources, the two evaluation protocols of METHODS.md §4, decoded from one image embedding per slice:

- ``fair`` (and inference): every slice; the classifier's probability gates it (below ``gate`` the slice is empty);
  the Grad-CAM box (central box when the CAM is empty) prompts SAM;
- ``anchor`` (the authors' protocol): only slices whose ground truth holds the organ, prompted with the tight
  box of that ground truth, no gate.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from monai.networks.nets import UNet
from monai.utils import look_up_option

from bundle.checkpoint_files import load_checkpoint
from bundle.errors import InputError
from bundle.hashing import file_sha256
from bundle.networks.sam_mix import SamMixNet
from bundle.sam.cam_prompts import mask_boxes
from bundle.sam.loading import load_sam, sam_info
from bundle.sam.trainable import TrainableSam
from bundle.workflows.common.card_schema import validate_card
from bundle.workflows.semisup.training import ADAPTER_KEY, GAIN_KEY, upgrade_card

__all__ = ["PROTOCOL_NAMES", "SamMixInferer", "SamMixPredictor", "build_unet", "read_card"]

logger = logging.getLogger(__name__)

PROTOCOL_NAMES = ("fair", "anchor")
"""The box sources: the CAM (every slice, classifier gate) and the ground truth (slices holding the organ)."""


def build_unet(args: dict) -> UNet:
    """The U-Net baseline (MONAI ``UNet``, 2D, one output logit) from its card entry."""
    return UNet(spatial_dims=2, in_channels=int(args["in_channels"]), out_channels=1, channels=tuple(args["channels"]),
                strides=tuple(args["strides"]), num_res_units=int(args["num_res_units"]))


def read_card(model_dir: str | os.PathLike) -> dict:
    """What ``model.pt`` of a trained model folder holds: the weights and the card (``card``), checked against the
    card schema (:mod:`bundle.workflows.common.card_schema`) before any of its values is used, and read as this
    version writes it (:func:`~bundle.workflows.semisup.training.upgrade_card`: ``gt_boxes`` as ``train_prompts``).

    Raises:
        InputError: not a SAM-Mix model file, or a card field that does not fit (names the file and the field).
    """
    path = Path(model_dir) / "model.pt"
    stored = load_checkpoint(path, what="SAM-Mix model")
    if not isinstance(stored, dict) or not isinstance(stored.get("card"), dict):
        raise InputError(path, "not a SAM-Mix model file (no card); train one with configs/train_sam_mix.json")
    validate_card(stored["card"], "sam_mix_stored", path)
    return {**stored, "card": upgrade_card(stored["card"])}


class SamMixPredictor:
    """Slice-wise predictions of a trained model folder.

    Args:
        model_dir: the folder ``configs/train_sam_mix.json`` wrote (``model.pt``, ``adapter.pt``).
        device: where to run.
        sam_checkpoint: the base SAM checkpoint when the recorded path has moved (checked against its sha256).
        batch_size: slices per forward pass.
        gate: classifier probability below which a slice is predicted empty (``cam`` boxes only).
    """

    def __init__(self, model_dir: str | os.PathLike, device="cpu", sam_checkpoint: str | None = None,
                 batch_size: int = 8, gate: float = 0.5) -> None:
        self.model_dir = Path(model_dir)
        stored = read_card(self.model_dir)
        self.card = stored["card"]
        self._adapter_sha256 = stored.get(ADAPTER_KEY)  # recorded since adapters were bound to model.pt
        self.method = self.card["method"]
        self.device = torch.device(device)
        self.batch_size, self.gate = int(batch_size), float(gate)
        self.roi_size = tuple(int(s) for s in self.card["roi_size"])
        if self.method == "unet":
            self.network = build_unet(self.card["unet"])
            self.network.load_state_dict(stored["network"])
        else:
            self.network = self._sam_mix(stored["network"], sam_checkpoint)
            with torch.no_grad():
                self.network.sam.guidance_gain.copy_(stored[GAIN_KEY])
        self.network.to(self.device).eval()

    def _sam_mix(self, classifier_state: dict, sam_checkpoint: str | None) -> SamMixNet:
        rec = self.card["sam"]
        checkpoint = sam_checkpoint or rec.get("checkpoint")
        if checkpoint and not os.path.isfile(checkpoint) and sam_checkpoint is None:
            raise FileNotFoundError(f"{self.model_dir}: the base SAM checkpoint it was trained on, {checkpoint}, is "
                                    "gone; give its new place with sam_checkpoint")
        info = sam_info(rec["model_type"], checkpoint or None)
        if info.checkpoint_sha256 != rec["checkpoint_sha256"]:
            raise ValueError(f"{self.model_dir}: trained on SAM {rec['model_type']} with sha256 "
                             f"{rec['checkpoint_sha256']}, but {info.checkpoint} has {info.checkpoint_sha256}")
        adapter = self.model_dir / "adapter.pt" if self.method == "sam_mix" else None
        if adapter is not None and self._adapter_sha256 and adapter.is_file() \
                and file_sha256(adapter) != self._adapter_sha256:
            raise InputError(adapter, f"is not the adapter {self.model_dir / 'model.pt'} was trained with (its "
                                      "sha256 differs from the one model.pt records: a kill between the two writes, "
                                      "or files from two runs): train again, or copy the folder of one run")
        sam = load_sam(rec["model_type"], info.checkpoint, adapter=adapter, merge_adapter=True)
        tsam = TrainableSam(sam, lora_rank=0, tune=False, multimask=rec["multimask"], guidance=rec["guidance"],
                            guidance_weight=rec["guidance_weight"])
        cls = self.card["classifier"]
        net = SamMixNet(tsam, backbone=cls["backbone"], in_channels=len(self.card["image_channel_names"]),
                        backbone_kwargs=cls["backbone_kwargs"], cam_threshold=cls["cam_threshold"],
                        dense_guidance=cls["dense_guidance"], output_stride=cls.get("output_stride"))
        net.classifier.load_state_dict(classifier_state)
        return net

    def _resize(self, x: torch.Tensor, size, mode: str) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=tuple(size), mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))

    def predict_slices(self, x: torch.Tensor, truth: torch.Tensor | None = None, rows=None) -> dict:
        """Logits and prompts of ``[B, C, H, W]`` slices (at any size; run at the card's ``roi_size``).

        Args:
            x: slices, intensity-scaled as in training.
            truth: ``[k, 1, H, W]`` organ masks of the slices ``rows`` of ``x``: their boxes prompt SAM too (the
                authors' protocol), from the same image embeddings as the CAM boxes.
            rows: which slices of ``x`` ``truth`` belongs to (default: all).

        Returns:
            ``logits [B, 1, H, W]`` with the CAM boxes (at the input size), ``truth_logits [k, 1, H, W]`` with the
            ground-truth boxes (None without ``truth``), ``probability [B]`` (None for the U-Net), ``cam_empty [B]``.
        """
        height, width = x.shape[-2:]
        xr = self._resize(x.to(self.device).float(), self.roi_size, "bilinear")
        rows = list(range(len(x))) if rows is None else list(rows)
        truth_logits = None
        with torch.no_grad():
            if self.method == "unet":  # no prompt: both protocols score the same prediction
                logits, probability, empty = self.network(xr), None, torch.zeros(len(x), dtype=torch.bool)
                if truth is not None:
                    truth_logits = logits[rows]
            else:
                extra = None
                if truth is not None:
                    small = self._resize(truth.to(self.device).float(), self.roi_size, "nearest")
                    extra = (rows, mask_boxes(small > 0.5)[0])
                out = self.network.predict(xr, extra=extra)
                logits, probability, empty = out["logits"], out["probability"].cpu(), out["cam_empty"].cpu()
                truth_logits = out.get("extra_logits")
        if truth_logits is not None:
            truth_logits = self._resize(truth_logits, (height, width), "bilinear").cpu()
        return {"logits": self._resize(logits, (height, width), "bilinear").cpu(), "truth_logits": truth_logits,
                "probability": probability, "cam_empty": empty}

    def predict_volume(self, image: torch.Tensor, truth: torch.Tensor | None = None,
                       protocols: Sequence[str] = ("fair",)) -> dict[str, dict]:
        """The organ mask of a ``[C, H, W, D]`` volume (RAS, intensity-scaled) by each protocol, slice by slice, one
        image embedding per slice serving both.

        Args:
            image: the volume.
            truth: ``[1, H, W, D]`` organ mask, needed for ``anchor``.
            protocols: ``fair`` (CAM boxes, every slice, classifier gate) and / or ``anchor`` (ground-truth boxes,
                only the slices holding the organ).

        Returns:
            ``{protocol: {"mask" [1, H, W, D] uint8, "slices" (the slice indices predicted)}}``, and ``probability``
            ``[D]`` (NaN where not run; None for the U-Net) and ``cam_empty`` (slices whose CAM was empty) under
            ``fair``.
        """
        protocols = [look_up_option(p, PROTOCOL_NAMES) for p in protocols]
        image = torch.as_tensor(image).float()
        depth = image.shape[-1]
        positive: list[int] = []
        if "anchor" in protocols:
            if truth is None:
                raise ValueError("the anchor protocol needs the ground truth")
            truth = torch.as_tensor(truth).float()
            positive = [d for d in range(depth) if bool(truth[..., d].any())]
        slices = list(range(depth)) if "fair" in protocols else positive
        masks = {p: np.zeros((1, *image.shape[1:]), np.uint8) for p in protocols}
        probability = np.full(depth, np.nan)
        empty = []
        wanted = set(positive)
        for start in range(0, len(slices), self.batch_size):
            chunk = slices[start : start + self.batch_size]
            rows = [i for i, d in enumerate(chunk) if d in wanted]
            truth_chunk = truth[..., [chunk[i] for i in rows]].permute(3, 0, 1, 2) if rows else None
            out = self.predict_slices(image[..., chunk].permute(3, 0, 1, 2), truth_chunk, rows)
            if "fair" in masks:
                keep = out["logits"][:, 0] > 0
                if out["probability"] is not None:
                    probability[chunk] = out["probability"].numpy()
                    keep &= (out["probability"] >= self.gate)[:, None, None]
                masks["fair"][0][..., chunk] = keep.permute(1, 2, 0).numpy().astype(np.uint8)
                empty += [d for d, e in zip(chunk, out["cam_empty"].tolist()) if e]
            if rows:
                anchor = (out["truth_logits"][:, 0] > 0).permute(1, 2, 0).numpy().astype(np.uint8)
                masks["anchor"][0][..., [chunk[i] for i in rows]] = anchor
        result = {p: {"mask": masks[p], "slices": slices if p == "fair" else positive} for p in protocols}
        if "fair" in result:
            result["fair"].update(probability=None if self.method == "unet" else probability, cam_empty=empty)
        return result


class SamMixInferer(Inferer):
    """MONAI ``Inferer`` of ``configs/inference_sam_mix.json``'s evaluator: the ``fair`` organ mask (CAM boxes, every
    slice, classifier gate) of each ``[B, C, H, W, D]`` volume of a batch (RAS, intensity-scaled), as
    ``[B, 1, H, W, D]`` uint8.

    Args:
        predictor: the model folder's :class:`SamMixPredictor`; the evaluator's ``network`` must be its network
            (``network_def`` of the config), so what the evaluator holds is what predicts.
    """

    def __init__(self, predictor: SamMixPredictor) -> None:
        super().__init__()
        self.predictor = predictor

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        if network is not self.predictor.network:
            raise ValueError("SamMixInferer: the evaluator's network is not the predictor's (set network_def to "
                             "@predictor.network)")
        masks = [torch.as_tensor(self.predictor.predict_volume(volume)["fair"]["mask"]) for volume in inputs]
        return torch.stack(masks)
