"""What the app serves and where it keeps its files, from MONAI Label's ``--conf KEY VALUE`` pairs.

=================  ========================================================================================
``--conf`` key     meaning (default)
=================  ========================================================================================
``seg_model``      segmentation model folder: ``model.pt`` + ``model_card.json`` (``<repo>/models``, where the
                   bundle's training writes); the train task writes its model there too
``cls_model``      SAMAug-C classification model folder (none: no classification task)
``preset``         training preset, a name of ``configs/presets`` or a JSON file (the card's dataset, when it has
                   a preset); needed to train before any model exists
``work_dir``       the app's own folder (``<studies>/.sam_priors``; ``~/.cache/monailabel/sam_priors`` for a
                   DICOMweb server): the prior cache and the training runs live in it
``prior_cache``    SAM prior cache (``<work_dir>/cache``), shared by inference and training
``device``         ``cpu``, ``cuda``, ``cuda:1`` ... (CUDA when available); a request's ``device`` wins
``dcmqi_download`` ``true``: let MONAI Label download dcmqi for a DICOMweb datastore (``false``: never download)
=================  ========================================================================================

MONAI Label's sample-app keys ``zoo_source``, ``sam2``, ``models`` ... mean nothing here and are ignored: this app never
downloads a model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bundle.overrides import as_flag

__all__ = ["KNOWN_KEYS", "REPO_ROOT", "AppSettings", "is_remote", "truthy"]

#: the repository (apps/monailabel/lib/settings.py -> three levels up)
REPO_ROOT = Path(__file__).resolve().parents[3]
KNOWN_KEYS = ("seg_model", "cls_model", "preset", "work_dir", "prior_cache", "device", "dcmqi_download")


def is_remote(studies: str) -> bool:
    """True for a DICOMweb (or other server) address, False for a folder."""
    return str(studies).startswith(("http://", "https://"))


def truthy(value: object, key: str = "value") -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off) from a ``--conf`` or request value.

    Raises:
        ValueError: any other text.
    """
    if isinstance(value, str) and not value.strip():
        return False  # an empty --conf value
    return as_flag(value, key)


def _path(value: str | None) -> Path | None:
    return Path(os.path.expanduser(value)).resolve() if value else None


@dataclass(frozen=True)
class AppSettings:
    """The app's resolved settings (see the module docstring for each field's ``--conf`` key)."""

    seg_model: Path
    cls_model: Path | None
    preset: str | None
    work_dir: Path
    prior_cache: Path
    device: str | None
    dcmqi_download: bool

    @property
    def train_dir(self) -> Path:
        """Datalists and runs of the train task."""
        return self.work_dir / "train"

    @classmethod
    def from_conf(cls, studies: str, conf: Mapping[str, str]) -> AppSettings:
        """Settings for a server on ``studies`` (a folder or a DICOMweb address) started with ``conf``."""
        if is_remote(studies):
            default_work = Path.home() / ".cache" / "monailabel" / "sam_priors"
        else:
            default_work = Path(studies).resolve() / ".sam_priors"
        work_dir = _path(conf.get("work_dir")) or default_work
        return cls(
            seg_model=_path(conf.get("seg_model")) or REPO_ROOT / "models",
            cls_model=_path(conf.get("cls_model")),
            preset=conf.get("preset") or None,
            work_dir=work_dir,
            prior_cache=_path(conf.get("prior_cache")) or work_dir / "cache",
            device=conf.get("device") or None,
            dcmqi_download=truthy(conf.get("dcmqi_download", "false"), "dcmqi_download"),
        )
