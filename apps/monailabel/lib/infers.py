"""MONAI Label infer tasks that serve the bundle's trained models through :mod:`bundle.inference`.

Each task is a :class:`~monailabel.tasks.infer.basic_infer.BasicInferTask` whose steps are the bundle's batch
inference for one volume, not MONAI Label's generic pipeline:

- pre-transform :class:`LoadServedInputd`: the request's image path (a NIfTI/NRRD file of the datastore, or a DICOM
  series folder) -> the model's ``[C, I, J, K]`` input, checked, by :func:`bundle.inference.volumes.load_input`;
- ``run_inferer``: :meth:`bundle.inference.models.BatchModel.predict`, whose pipeline is the model's own (its card's
  preprocessing, SAM priors with the SAM configuration it was trained with, read from or written to the app's prior
  cache under the case id :func:`lib.datalist.case_id_for`, inversion back to the input grid);
- no inverse or post transforms: the prediction already is a ``uint8`` label map in the input's grid (segmentation),
  or class probabilities (classification, no restore-to-shape step);
- ``writer``: the label map as NIfTI with the input's shape and affine (nibabel, so the affine is the input's own,
  bit for bit), or the probabilities as the JSON result.

The model folder is read again whenever ``model.pt`` or ``model_card.json`` change, so a training of the app (or a
model copied in) is served from the next request on, without a restart.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from fastapi import HTTPException
from monai.data import MetaTensor
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from bundle.errors import InputError
from bundle.inference.modality import modality_problem
from bundle.inference.models import BatchModel, load_model, segment_names
from bundle.inference.sources import collect_inputs
from bundle.inference.volumes import load_input
from bundle.workflows.common.model_card import card_kind, read_card
from lib.datalist import case_id_for
from lib.settings import truthy

__all__ = ["ClassificationTask", "LoadServedInputd", "SegmentationTask", "ServedModel"]

logger = logging.getLogger(__name__)

_NIFTI = (".nii.gz", ".nii")


def _refuse(message: str) -> HTTPException:
    """An error the client shows as it is (422) instead of MONAI Label's bare 500."""
    return HTTPException(status_code=422, detail=message)


_RESULTS: list[str] = []


def _results_dir() -> str:
    """A folder of this process only (mode 0700) for the label maps being sent: MONAI Label's infer uploads are
    recognised by their name in the shared temporary folder (:func:`lib.datastore.is_upload`), and a result there
    would look like one."""
    if not _RESULTS or not os.path.isdir(_RESULTS[0]):
        _RESULTS[:] = [tempfile.mkdtemp(prefix="sam_priors_results_")]
    return _RESULTS[0]


class ServedModel:
    """A model folder (``model.pt`` + ``model_card.json``), rebuilt by :func:`bundle.inference.models.load_model`
    whenever one of its files changes.

    Args:
        folder: the model folder.
        prior_cache: the SAM prior cache of every request.
    """

    def __init__(self, folder: Path, prior_cache: Path) -> None:
        self.folder, self.prior_cache = Path(folder), Path(prior_cache)
        self._lock = threading.Lock()
        self._model: BatchModel | None = None
        self._key: tuple = ()

    @property
    def weights(self) -> Path:
        return self.folder / "model.pt"

    def exists(self) -> bool:
        return self.weights.is_file() and (self.folder / "model_card.json").is_file()

    def card(self) -> dict | None:
        """The card, or None while the folder holds no model (an unreadable card is logged, not raised: ``/info``
        must keep answering)."""
        if not self.exists():
            return None
        try:
            card = read_card(self.folder)
            card_kind(card, self.folder / "model_card.json")
            return card
        except (InputError, OSError) as err:
            logger.error("%s", err)
            return None

    def _stamp(self) -> tuple:
        return tuple(os.stat(p).st_mtime_ns for p in (self.weights, self.folder / "model_card.json"))

    def get(self, device: str) -> BatchModel:
        """The model on ``device``, rebuilt when the files changed since it was built."""
        with self._lock:
            try:
                key = (str(device), *self._stamp())
            except FileNotFoundError:
                raise _refuse(f"{self.folder}: no trained model (model.pt and model_card.json) yet") from None
            if self._model is None or key != self._key:
                start = time.perf_counter()
                try:
                    self._model = load_model(self.folder, device, prior_cache_dir=str(self.prior_cache))
                except InputError as err:
                    raise _refuse(str(err)) from err
                self._key = key
                logger.info("loaded %s from %s in %.1f s: %s", self._model.kind, self.folder,
                            time.perf_counter() - start, self._model.description)
            return self._model


class LoadServedInputd:
    """Pre-transform: ``data["image"]`` (the file the app resolved: :func:`lib.datastore.resolve_image`) -> the model's
    checked ``[C, I, J, K]`` MetaTensor.

    Also sets ``case_id`` (the cache's name of the case), ``image_path``, ``affine`` (the file's voxel-to-RAS affine,
    the output's) and ``spatial_shape`` (the shape the output is written in; two axes for a 2D image).

    Args:
        channel_names: the image channels the model takes (one file per channel is not possible through MONAI Label:
            a multi-channel model needs a 4D file holding those channels).
    """

    def __init__(self, channel_names: list[str]) -> None:
        self.channel_names = list(channel_names)

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        path = d.get("image")
        if not isinstance(path, str) or not path:
            raise _refuse("no image given: pass a datastore image id (image=ID), or upload the file (file=...)")
        # refusals name the image as the client knows it (its datastore id), never by its path on the server
        name = f"image id {d['image_id']!r}" if d.get("image_id") else "the uploaded image"

        def refuse(text: str) -> HTTPException:
            return _refuse(text.replace(path, name))

        sources, skipped = collect_inputs([path])
        if len(sources) != 1:
            reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped if s.status == "failed")
            raise refuse(f"{path}: holds {len(sources)} readable volumes, one is needed" + (f" ({reasons})" if reasons
                                                                                             else ""))
        try:
            loaded = load_input(sources[0], self.channel_names)
        except InputError as err:
            raise refuse(str(err)) from err
        series = sources[0].series
        d.update(image=loaded.image, image_path=path, case_id=case_id_for(path), affine=loaded.affine,
                 spatial_shape=loaded.spatial_shape, dicom_modality=series.modality if series is not None else None)
        return d


class _ServedTask(BasicInferTask):
    """What the segmentation and classification tasks share: the served folder, input loading, prior bookkeeping."""

    def __init__(self, served: ServedModel, infer_type: InferType, description: str, device: str | None) -> None:
        self.served = served
        super().__init__(path=str(served.weights), network=None, type=infer_type, labels=self.card_labels(),
                         dimension=3, description=description, config={"device": device} if device else None)

    def card_labels(self) -> Any:
        raise NotImplementedError

    def is_valid(self) -> bool:
        return self.served.exists()

    def info(self) -> dict:
        self.labels = self.card_labels()  # a training may have written a new card since the server started
        return super().info()

    def pre_transforms(self, data=None) -> list:
        model = self.served.get(data["device"])
        return [LoadServedInputd(model.channel_names)]

    def inverse_transforms(self, data=None):
        return None  # the model's own pipeline inverts its preprocessing

    def post_transforms(self, data=None) -> list:
        return []

    def _entry_stamps(self, case_id: str) -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in self.served.prior_cache.glob(f"*/{case_id}/entry.json")}

    @staticmethod
    def _check_modality(model: BatchModel, data: dict) -> None:
        """Refuse an image whose DICOM Modality or intensities contradict the model's (the batch inference rule,
        :mod:`bundle.inference.modality`) unless the request sends ``allow_modality_mismatch: true``."""
        reason = modality_problem(model.modality, np.asarray(data["image"]), data.get("dicom_modality"))
        if not reason:
            return
        reason = reason.split("; pass --allow_modality_mismatch")[0]
        try:
            allowed = truthy(data.get("allow_modality_mismatch", False), "allow_modality_mismatch")
        except ValueError as err:
            raise _refuse(str(err)) from err
        if allowed:
            logger.warning("case %s: %s; run anyway (allow_modality_mismatch)", data["case_id"], reason)
            return
        name = f"image id {data['image_id']!r}" if data.get("image_id") else "the uploaded image"
        raise _refuse(f"{name}: {reason}; send allow_modality_mismatch: true in the request's params to run it anyway")

    def predict(self, data: dict, device: str) -> tuple[Any, dict]:
        """``(prediction, result fields)``; the fields say whether the SAM priors were computed or read."""
        model = self.served.get(device)
        case_id = data["case_id"]
        self._check_modality(model, data)
        before = self._entry_stamps(case_id)
        start = time.perf_counter()
        prediction = model.predict(data["image"], case_id)
        seconds = time.perf_counter() - start
        if not model.uses_priors:
            priors = "not used"
        else:
            priors = "computed" if self._entry_stamps(case_id) != before else "read from cache"
        logger.info("case %s: SAM priors %s (cache %s); prediction %.2f s", case_id, priors,
                    self.served.prior_cache, seconds)
        return prediction, {"case_id": case_id, "sam_priors": priors, "predict_seconds": round(seconds, 3),
                            "model": model.description}

    def run_inferer(self, data: dict, convert_to_batch: bool = True, device: str = "cuda") -> dict:
        data[self.output_label_key], data[self.output_json_key] = self.predict(data, device)
        return data


class SegmentationTask(_ServedTask):
    """Segmentation (SAMAug, WeakMedSAM, SAM-Mix): the label map in the input's shape and affine."""

    def __init__(self, served: ServedModel, device: str | None = None) -> None:
        super().__init__(served, InferType.SEGMENTATION, "SAM-prior segmentation of the bundle (model folder "
                         f"{served.folder}); SAM priors computed once per image and cached", device)

    def card_labels(self) -> dict[str, int]:
        card = self.served.card()
        if not card:
            return {}
        if card.get("kind") == "sam_mix":
            return {str(card.get("organ", "organ")): 1}
        names = segment_names(card["config"]["regions"], card.get("dataset_name"))
        return {name: value for value, name in sorted(names.items())}

    def writer(self, data: dict, extension=None, dtype=None) -> tuple[str, dict]:
        label = np.asarray(data[self.output_label_key], np.uint8).reshape(data["spatial_shape"])
        affine = np.asarray(data["affine"], np.float64)
        ext = extension or data.get("result_extension") or ".nii.gz"
        result = data[self.output_json_key]
        if ext not in _NIFTI:  # .nrrd, .seg.nrrd ...: MONAI Label's own writer, from a tensor carrying the affine
            data[self.output_label_key] = MetaTensor(torch.from_numpy(label), affine=torch.as_tensor(affine))
            return super().writer(data, extension=ext, dtype=dtype)
        with tempfile.NamedTemporaryFile(suffix=ext, delete=False, dir=_results_dir()) as f:
            path = f.name
        image = nib.Nifti1Image(label, affine)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        nib.save(image, path)
        return path, result


class ClassificationTask(_ServedTask):
    """SAMAug-C classification: class probabilities per slice or for the volume, as JSON (no label image)."""

    def __init__(self, served: ServedModel, device: str | None = None) -> None:
        super().__init__(served, InferType.CLASSIFICATION, "SAMAug-C classification of the bundle (model folder "
                         f"{served.folder}): class probabilities as JSON", device)

    def card_labels(self) -> list[str]:
        card = self.served.card()
        return list(card.get("class_names", [])) if card else []

    def run_inferer(self, data: dict, convert_to_batch: bool = True, device: str = "cuda") -> dict:
        rows, result = self.predict(data, device)
        model = self.served.get(device)
        names = list(model.class_names)
        if model.multi_label:
            predicted = [[n for n in names if row[n] >= 0.5] for row in rows]
        else:
            predicted = [max(names, key=lambda n: row[n]) for row in rows]
        result.update(level=model.level, class_names=names, multi_label=model.multi_label, rows=rows,
                      predicted=predicted)
        data[self.output_json_key] = result
        return data

    def writer(self, data: dict, extension=None, dtype=None) -> tuple[None, dict]:
        return None, data[self.output_json_key]
