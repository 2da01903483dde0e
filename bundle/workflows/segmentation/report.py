"""Per-case segmentation reports: Dice, Jaccard, HD95 and the per-slice metrics of every case and region.

:class:`SegmentationReport` is the ignite handler; it scores each case with :func:`case_record` and leaves
collecting, gathering across ranks and writing the files to :class:`bundle.workflows.common.case_report.CaseReport`
(whose module docstring describes the three files). :func:`write_report` writes records computed outside an engine,
e.g. from predictions saved to disk.

A segmentation record adds ``spacing`` (mm per spatial axis, from the affine), written as the CSV column after
``source``; the summary carries :data:`bundle.workflows.common.seg_metrics.METRIC_DEFINITIONS`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing

from bundle.workflows.common.authors_metrics import (
    AUTHORS_METRIC_DEFINITIONS,
    AUTHORS_POOLING,
    WEAK_AUTHORS_METRICS,
    weak_authors_metrics,
)
from bundle.workflows.common.case_report import CaseReport, case_id_from_meta, sources_from_meta
from bundle.workflows.common.case_report import write_report as write_case_report
from bundle.workflows.common.seg_metrics import METRIC_DEFINITIONS, SLICE_METRICS, VOLUME_METRICS, case_metrics

__all__ = ["METRIC_NAMES", "SegmentationReport", "spacing_from_meta", "case_record", "write_report"]

METRIC_NAMES = VOLUME_METRICS + SLICE_METRICS
_INFO_COLUMNS = ("spacing",)


def spacing_from_meta(*tensors) -> list[float]:
    """Voxel spacing (mm per spatial axis) from the affine of the first ``MetaTensor`` given.

    Raises:
        ValueError: none of the tensors is a ``MetaTensor``, so distances in mm cannot be trusted.
    """
    for t in tensors:
        if isinstance(t, MetaTensor):
            affine = t.affine
            spatial = t.ndim - 1
            return [float(s) for s in affine_to_spacing(affine.detach().cpu(), r=spatial)]
    raise ValueError(
        "pred and label are plain tensors: the voxel spacing for HD95 in mm comes from a MetaTensor affine; "
        "keep MetaTensors through the post-processing (e.g. EnsureTyped(track_meta=True))"
    )


def case_record(
    pred,
    label,
    class_names: Sequence[str] | None = None,
    case_id: str | None = None,
    spacing: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Metrics of one ``[C, H, W, D]`` case as a report record.

    Args:
        pred: binary prediction; a ``MetaTensor`` supplies spacing and case id when those are not given.
        label: binary ground truth, same shape; its meta is preferred over the prediction's.
        class_names: names of the C channels.
        case_id: explicit case id; default from ``filename_or_obj`` (label first, then prediction).
        spacing: explicit voxel spacing in mm; default from the affine (label first, then prediction).

    Returns:
        ``{"case_id", "source", "spacing", "metrics": {class: {metric: float}}}``.
    """
    if spacing is None:
        spacing = spacing_from_meta(label, pred)
    return {
        "case_id": case_id if case_id is not None else case_id_from_meta(label, pred),
        "source": next(iter(sources_from_meta(label, pred)), None),
        "spacing": [float(s) for s in spacing],
        "metrics": case_metrics(pred, label, spacing=spacing, class_names=class_names),
    }


def write_report(
    records: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    class_names: Sequence[str],
    tags: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the three report files of segmentation records (:func:`case_record`) into ``output_dir``.

    Returns:
        the summary written to ``metrics_summary.json`` (NaN as ``None``).
    """
    return write_case_report(
        records,
        output_dir,
        class_names,
        METRIC_NAMES,
        metric_definitions=METRIC_DEFINITIONS,
        tags=tags,
        info_columns=_INFO_COLUMNS,
    )


class SegmentationReport(CaseReport):
    """Ignite handler: the segmentation metrics of every evaluated case, written when the evaluator run ends.

    Each case's binary ``pred`` and ``label`` ``[C, H, W, D]`` are scored by :func:`case_record`, with the spacing
    taken from the label's (else the prediction's) ``MetaTensor`` affine. Arguments as
    :class:`bundle.workflows.common.case_report.CaseReport`; ``class_names`` are the region channels (e.g.
    ``["WT", "TC", "ET"]``) and ``tags`` e.g. ``{"prior_mode": "concat", "infer_mode": "aug_only", "seed": 0}``.
    """

    metric_names = METRIC_NAMES
    metric_definitions = METRIC_DEFINITIONS
    info_columns = _INFO_COLUMNS
    title = "segmentation report"

    def __init__(self, *args, authors_metrics: bool = False, authors_image_key: str | None = None, **kwargs) -> None:
        """``authors_metrics`` adds the WeakMedSAM authors' slice distances (``authors_*``, pooled over slices; see
        :mod:`bundle.workflows.common.authors_metrics`) next to the standard ones; ``authors_image_key`` names the
        batch key of the image on the label's grid used for the authors' trim (``None``: untrimmed slices)."""
        super().__init__(*args, **kwargs)
        self.authors_metrics = bool(authors_metrics)
        self.authors_image_key = authors_image_key
        if self.authors_metrics:
            self.metric_names = METRIC_NAMES + WEAK_AUTHORS_METRICS
            self.metric_definitions = {**METRIC_DEFINITIONS,
                                       **{k: AUTHORS_METRIC_DEFINITIONS[k] for k in WEAK_AUTHORS_METRICS}}
            self.metric_pooling = {k: v for k, v in AUTHORS_POOLING.items() if k in WEAK_AUTHORS_METRICS}

    def case_extras(self, data: Any) -> dict[str, Any]:
        """The image for the authors' trim, when asked for; refuses when the batch does not hold it."""
        if not (self.authors_metrics and self.authors_image_key):
            return {}
        if not isinstance(data, Mapping) or data.get(self.authors_image_key) is None:
            raise ValueError(f"SegmentationReport: authors_image_key {self.authors_image_key!r} is not in the batch; "
                             "load the image on the label's grid under that key, or set authors_image_key to null")
        image = data[self.authors_image_key]
        return {"image": image.detach().cpu().numpy() if hasattr(image, "detach") else image}

    def score_case(self, pred: Any, label: Any, class_names: Sequence[str], case_id: str,
                   image: Any = None) -> dict[str, Any]:
        """The :func:`case_record` of one case, plus the authors' slice distances when asked for."""
        record = case_record(pred, label, class_names=class_names, case_id=case_id)
        if self.authors_metrics:
            authors = weak_authors_metrics(_binary(pred), _binary(label), image=image, class_names=class_names)
            record["metrics"] = {k: {**v, **authors[k]} for k, v in record["metrics"].items()}
        return record


def _binary(x: Any):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x
