"""MONAI Label app serving the bundle's trained models to 3D Slicer and OHIF.

Tasks:

- ``segmentation`` (infer and train): the model of ``--conf seg_model`` (default ``<repo>/models``), SAMAug /
  WeakMedSAM / SAM-Mix, with SAM priors computed in the request with the SAM configuration the model was trained
  with and cached per image; the label map comes back in the input's shape and affine. Training (SAMAug models, or
  a first model with ``--conf preset``) uses the datastore's final labels.
- ``classification`` (infer, when ``--conf cls_model`` is a SAMAug-C model folder): class probabilities as JSON.

Start it from the repository root with the app's own environment (``bash scripts/setup_monailabel.sh``)::

    .venv-monailabel/bin/python -m monailabel.main start_server --app apps/monailabel --studies /data/ct \\
        --conf seg_model models

Only the datastore is served: a request's ``image`` is a datastore id or an upload, never a path on the server, and
the local datastore reads and writes inside the studies folder only (:mod:`lib.datastore`).

Everything is offline: nothing is downloaded at start or at run time. ``docs/monailabel.md`` has the details.
"""

# The bundle's torchvision layer first: on CPU-only machines the only torchvision wheel is a CUDA build that imports
# only once its missing operators are defined, and MONAI Label, timm and segment-anything all import torchvision.
import bundle.sam.torchvision_compat as _torchvision_compat

_torchvision_compat.torchvision_available()

import logging
import shutil
from pathlib import Path

from fastapi import HTTPException
from lib.datastore import StudiesDatastore, check_tag, resolve_image
from lib.infers import ClassificationTask, SegmentationTask, ServedModel
from lib.settings import KNOWN_KEYS, AppSettings, is_remote, truthy
from lib.trainers import SegmentationTrainTask
from monailabel.config import settings as monailabel_settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

import bundle

logger = logging.getLogger(__name__)

SEGMENTATION, CLASSIFICATION = "segmentation", "classification"


class SamPriorsApp(MONAILabelApp):
    """The bundle's models behind MONAI Label (see the module docstring and :mod:`lib.settings` for ``--conf``)."""

    def __init__(self, app_dir: str, studies: str, conf: dict) -> None:
        conf = dict(conf or {})
        self.app_settings = AppSettings.from_conf(studies, conf)
        ignored = sorted(k for k in conf if k not in KNOWN_KEYS)
        if ignored:
            logger.info("--conf keys this app does not use (MONAI Label's sample-app settings?): %s", ignored)
        s = self.app_settings
        self.seg_model = ServedModel(s.seg_model, s.prior_cache)
        self.cls_model = ServedModel(s.cls_model, s.prior_cache) if s.cls_model else None
        logger.info("segmentation model folder %s%s; classification model folder %s; prior cache %s; work folder %s",
                    s.seg_model, "" if self.seg_model.exists() else " (no model yet)", s.cls_model, s.prior_cache,
                    s.work_dir)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="SAM priors (MONAI bundle)",
                         description="Segmentation and classification with Segment Anything priors (SAMAug, "
                                     "SAMAug-C, WeakMedSAM, SAM-Mix), served from the bundle's model folders",
                         version=bundle.__version__)

    def init_datastore(self) -> Datastore:
        """MONAI Label's local datastore confined to the studies folder (:class:`lib.datastore.StudiesDatastore`,
        same MONAI Label settings); a DICOMweb server's datastore as MONAI Label makes it."""
        if is_remote(self.studies):
            return super().init_datastore()
        s = monailabel_settings
        return StudiesDatastore(self.studies, extensions=s.MONAI_LABEL_DATASTORE_FILE_EXT,
                                auto_reload=s.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                                read_only=s.MONAI_LABEL_DATASTORE_READ_ONLY)

    def infer(self, request: dict, datastore: Datastore | None = None) -> dict:
        """MONAI Label's infer, with ``image`` resolved by :func:`lib.datastore.resolve_image` (a datastore id or
        an upload, never a path the client names) before MONAI Label sees it.

        MONAI Label's own resolution takes any existing path first, so it is given the resolved file, and the label
        of a datastore image (``save_label``, ``label_tag``: batch inference, or a client asking) is saved here,
        through the confined datastore.
        """
        if not isinstance(request.get("image", ""), str):  # an array from MONAI Label's own callers
            return super().infer(request, datastore)
        datastore = datastore or self.datastore()
        sessions = self.sessions()
        path, image_id = resolve_image(request, datastore, sessions.store_path if sessions else None)
        try:
            save = image_id is not None and truthy(request.get("save_label", False), "save_label")
        except ValueError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None
        tag = check_tag(request.get("label_tag") or DefaultLabelTag.ORIGINAL.value) if save else None
        result = super().infer({**request, "image": path, "image_id": image_id, "save_label": False}, datastore)
        if save and result.get("file") and Path(result["file"]).exists():
            result["label"] = datastore.save_label(image_id, result["file"], tag,
                                                   {"model": request.get("model"), "params": result.get("params")})
        return result

    def infer_wsi(self, request: dict, datastore: Datastore | None = None) -> dict:
        """No whole-slide inference: MONAI Label's would read ``image`` as a server path before the app's checks."""
        raise HTTPException(status_code=404, detail="this app segments 3D volumes: use POST /infer/<model>, not the "
                                                    "whole-slide (wsi) endpoints")

    def init_infers(self) -> dict:
        infers = {SEGMENTATION: SegmentationTask(self.seg_model, self.app_settings.device)}
        if self.cls_model is not None:
            card = self.cls_model.card()
            if card is not None and card.get("kind", "classification") != "classification":
                raise ValueError(f"--conf cls_model {self.cls_model.folder}: its model card is of kind "
                                 f"{card.get('kind')!r}, not classification")
            if card is None:
                logger.warning("--conf cls_model %s holds no model (model.pt + model_card.json): the classification "
                               "task is listed once one is there", self.cls_model.folder)
            infers[CLASSIFICATION] = ClassificationTask(self.cls_model, self.app_settings.device)
        card = self.seg_model.card()
        if card is not None and card.get("kind") not in ("segmentation", "sam_mix"):
            raise ValueError(f"--conf seg_model {self.seg_model.folder}: its model card is of kind "
                             f"{card.get('kind')!r}; give a classification model as --conf cls_model")
        return infers

    def init_trainers(self) -> dict:
        card = self.seg_model.card()
        if card is None and not self.app_settings.preset:
            logger.info("no segmentation model yet and no --conf preset: no train task (a preset lets the app train "
                        "a first model from the datastore's labels)")
            return {}
        if card is not None and (card.get("kind") != "segmentation" or card.get("method", "samaug") != "samaug"):
            logger.info("the served model is %s/%s: the app trains SAMAug segmentation models only, no train task",
                        card.get("kind"), card.get("method"))
            return {}
        return {SEGMENTATION: SegmentationTrainTask(self.seg_model, self.app_settings)}

    def _download_dcmqi_tools(self) -> None:
        """MONAI Label downloads dcmqi (DICOM-SEG writer) for a DICOMweb datastore; this app downloads nothing
        unless ``--conf dcmqi_download true``."""
        if self.app_settings.dcmqi_download:
            super()._download_dcmqi_tools()
            return
        tool = "itkimage2segimage"
        if not (shutil.which(tool) or (Path(self.app_dir) / "bin" / tool).exists()):
            logger.warning("dcmqi's %s is not on PATH nor in %s: saving labels to the DICOMweb server (DICOM-SEG) "
                           "will fail; install dcmqi (pip install dcmqi, or a release into that folder) or start "
                           "with --conf dcmqi_download true", tool, Path(self.app_dir) / "bin")
