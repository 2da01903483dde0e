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

Everything is offline: nothing is downloaded at start or at run time. ``docs/monailabel.md`` has the details.
"""

# The bundle's torchvision layer first: on CPU-only machines the only torchvision wheel is a CUDA build that imports
# only once its missing operators are defined, and MONAI Label, timm and segment-anything all import torchvision.
import bundle.sam.torchvision_compat as _torchvision_compat

_torchvision_compat.torchvision_available()

import logging
import shutil
from pathlib import Path

from lib.infers import ClassificationTask, SegmentationTask, ServedModel
from lib.settings import KNOWN_KEYS, AppSettings
from lib.trainers import SegmentationTrainTask
from monailabel.interfaces.app import MONAILabelApp

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
