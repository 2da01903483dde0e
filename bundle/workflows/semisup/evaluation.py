"""SAM-Mix evaluation, both ways and labelled (METHODS.md §4).

- **fair**: what a user gets. Every test slice; the classifier gates each slice, the CAM box prompts SAM; the
  slices are put back into the volume, and the organ is scored in 3D: Dice and HD95 in millimetres (voxel spacing
  from the image's affine).
- **anchor**: the authors' protocol, comparable with their published numbers. Only the slices whose ground truth
  holds the organ, each prompted with the tight box of its ground truth; Dice per slice and HD95 per slice in
  pixels, averaged over those slices; next to them, labelled ``authors_*``, ADA-SAM's own HD (maximum Hausdorff in
  pixels at 1024 x 1024, infinite for an empty prediction, pooled over slices:
  :mod:`bundle.workflows.common.authors_metrics`).

Each protocol is written as a report of its own (``fair/`` and ``anchor/`` under the evaluation folder, the files of
:func:`bundle.workflows.common.case_report.write_report`, which ``scripts/compare_runs.py`` tabulates over seeds), and
``sam_mix_evaluation.json`` holds both, every number under its protocol's name with the protocol described.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bundle.atomic import write_text_atomic
from bundle.workflows.common.authors_metrics import (
    AUTHORS_METRIC_DEFINITIONS,
    AUTHORS_POOLING,
    SAM_MIX_AUTHORS_METRICS,
    sam_mix_authors_slice,
)
from bundle.workflows.common.case_report import format_summary_table, json_safe, write_report
from bundle.workflows.common.seg_metrics import dice, slice_surface_distances, volume_metrics
from bundle.workflows.semisup.predictor import SamMixPredictor

__all__ = ["PROTOCOLS", "PROTOCOL_METRICS", "PROTOCOL_POOLING", "METRIC_DEFINITIONS", "evaluate_case", "write_evaluation"]

logger = logging.getLogger(__name__)

PROTOCOLS = {
    "fair": "every test slice, prompted from the image alone: SAM gets the classifier's CAM box (the central box when "
            "the CAM is empty) and slices the classifier calls negative stay empty; the U-Net takes no prompt; "
            "scored in 3D on the reassembled volume",
    "anchor": "only the slices whose ground truth holds the organ, SAM prompted with the tight box of that ground "
              "truth (the SAM-Mix authors' evaluation; the U-Net takes no prompt); scored per slice and averaged "
              "over those slices",
}
PROTOCOL_METRICS = {"fair": ("dice", "hd95"), "anchor": ("slice_dice", "slice_hd95_px", *SAM_MIX_AUTHORS_METRICS)}
#: the anchor's authors_hd_px1024 is a mean over slices in each case, pooled over slices in the summary
PROTOCOL_POOLING = {"fair": {}, "anchor": {k: v for k, v in AUTHORS_POOLING.items() if k in SAM_MIX_AUTHORS_METRICS}}
METRIC_DEFINITIONS = {
    "dice": "3D Dice of the organ on the reassembled volume; 1.0 when prediction and truth are both empty",
    "hd95": "3D 95th-percentile Hausdorff distance in mm (MONAI); NaN if either side is empty",
    "slice_dice": "2D Dice per slice holding the organ in the ground truth, averaged over those slices",
    "slice_hd95_px": "2D HD95 in pixels (medpy definition) per slice holding the organ, averaged over the slices "
                     "where the prediction is not empty",
    **{k: AUTHORS_METRIC_DEFINITIONS[k] for k in SAM_MIX_AUTHORS_METRICS},
}


def evaluate_case(predictor: SamMixPredictor, image, truth, spacing: Sequence[float], organ: str,
                  protocols: Sequence[str] = ("fair", "anchor")) -> dict[str, dict]:
    """Score one case by each protocol.

    Args:
        predictor: the trained model.
        image: ``[C, H, W, D]`` RAS, intensity-scaled.
        truth: ``[1, H, W, D]`` organ mask.
        spacing: voxel size in mm (H, W, D axes).
        organ: the class name in the report.

    Returns:
        ``{protocol: {"metrics": {organ: {...}}, "seconds", ...}}``; ``seconds`` is the prediction time of the case
        (both protocols share it); ``fair`` also counts the slices whose CAM was empty (central box), ``anchor`` the
        slices scored.
    """
    truth = np.asarray(truth) > 0.5
    start = time.perf_counter()
    pred = predictor.predict_volume(image, truth, protocols)  # one image embedding per slice for both protocols
    seconds = time.perf_counter() - start
    out = {}
    if "fair" in pred:
        fair = pred["fair"]
        scores = volume_metrics(fair["mask"], truth, spacing=spacing, class_names=[organ])[organ]
        out["fair"] = {"metrics": {organ: {"dice": scores["dice"], "hd95": scores["hd95"]}}, "seconds": seconds,
                       "empty_cams": len(fair["cam_empty"])}
    if "anchor" in pred:
        anchor = pred["anchor"]
        slice_dice, hd, hd_authors = [], [], []
        for d in anchor["slices"]:
            p, g = anchor["mask"][0, ..., d] > 0, truth[0, ..., d]
            slice_dice.append(dice(p, g))
            hd.append(slice_surface_distances(p, g)[1])
            hd_authors.append(sam_mix_authors_slice(p, g))
        hd = np.asarray(hd, float)
        # ADA-SAM's convention: an empty prediction is infinitely far, and one such slice makes the mean infinite
        hd_authors = np.asarray(hd_authors, float)
        out["anchor"] = {
            "metrics": {organ: {"slice_dice": float(np.mean(slice_dice)) if slice_dice else float("nan"),
                                "slice_hd95_px": float(np.nanmean(hd)) if np.isfinite(hd).any() else float("nan"),
                                "authors_hd_px1024": float(hd_authors.mean()) if hd_authors.size else float("nan"),
                                "authors_slices": float(hd_authors.size),
                                "authors_empty_pred_slices": float(np.isinf(hd_authors).sum())}},
            "seconds": seconds, "slices": len(anchor["slices"]),
        }
    return out


def write_evaluation(records: Mapping[str, Sequence[Mapping]], eval_dir: str | Path, organ: str,
                     tags: Mapping) -> dict:
    """Write the report of each protocol (``eval_dir/<protocol>/``) and ``sam_mix_evaluation.json`` with both.

    Args:
        records: ``{protocol: [{"case_id", "source", "metrics", ...}]}``.
        tags: the run description (method, labelled slices, seed, SAM) copied into every summary.
    """
    eval_dir = Path(eval_dir)
    both = {"tags": dict(tags), "protocols": {}}
    for protocol, recs in records.items():
        summary = write_report(recs, eval_dir / protocol, [organ], PROTOCOL_METRICS[protocol],
                               {k: METRIC_DEFINITIONS[k] for k in PROTOCOL_METRICS[protocol]},
                               {**tags, "protocol": protocol, "protocol_description": PROTOCOLS[protocol]},
                               pooling=PROTOCOL_POOLING[protocol])
        both["protocols"][protocol] = {"description": PROTOCOLS[protocol], "metrics": summary["metrics"],
                                       "n_cases": summary["n_cases"]}
        logger.info("%s", format_summary_table(summary, title=f"SAM-Mix evaluation ({protocol})"))
    write_text_atomic(eval_dir / "sam_mix_evaluation.json", json.dumps(json_safe(both), indent=1) + "\n")
    return both
