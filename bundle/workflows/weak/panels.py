"""TensorBoard panels of the WeakMedSAM pseudo-label stage: image, CAM, SAM logit map, refined map, pseudo label.

For each shown case the slice the classifier is most sure is positive is drawn, every panel at the slice's size and
scaled to [0, 1] (the logit map per slice, the CAM and the refined map as they are, labels as class / classes), under
``weak/<case_id>/<panel>`` with the slice index in the text tag ``weak/<case_id>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bundle.workflows.common.handlers import to_unit_range

__all__ = ["PANELS", "slice_panels", "write_panels"]

PANELS = ("image", "cam", "sam_logits", "refined", "pseudo_label", "cam_label")


def _unit_np(x) -> np.ndarray:
    return to_unit_range(torch.as_tensor(np.asarray(x, np.float32))).numpy()


def _resize(x: np.ndarray, size) -> np.ndarray:
    t = torch.as_tensor(np.asarray(x, np.float32))[None, None]
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


def slice_panels(image: np.ndarray, maps: Mapping[str, np.ndarray], d: int, num_classes: int) -> dict[str, np.ndarray]:
    """``{panel: [H, W] in [0, 1]}`` of slice ``d`` from :meth:`PseudoLabels.refine`'s maps and the ``[C, H, W, D]``
    classifier input (channel 0 shown)."""
    size = image.shape[1:3]
    return {
        "image": _unit_np(image[0, ..., d]),
        "cam": _resize(maps["cams"][d].max(axis=0), size),
        "sam_logits": _unit_np(_resize(maps["logits"][..., d], size)),
        "refined": _resize(maps["refined"][d].max(axis=0), size),
        "pseudo_label": maps["pseudo"][..., d].astype(np.float32) / max(num_classes, 1),
        "cam_label": maps["cam"][..., d].astype(np.float32) / max(num_classes, 1),
    }


def write_panels(writer, pseudo, entries: Sequence[Mapping], loader, computed: Mapping | None = None,
                 step: int = 0) -> None:
    """Draw the panels of ``entries`` (label-free: the entries carry no label path) with ``writer``.

    ``computed`` maps case ids to the ``(image, maps)`` the pseudo-label stage just made; other cases are refined
    again here (cached cases of a rerun; with ``cam_peaks`` their ``M`` is not cached and they are not drawn).
    """
    computed = computed or {}
    for entry in entries:
        case_id = entry["case_id"]
        if case_id in computed:
            image, maps = computed[case_id]
        elif pseudo.features.with_maps:
            image = loader({k: v for k, v in entry.items() if k != "label"})["image"]
            maps = pseudo.refine(image, case_id)
        else:
            continue
        d = int(np.argmax(maps["probabilities"].max(axis=1)))
        for name, panel in slice_panels(np.asarray(image), maps, d, maps["cams"].shape[1]).items():
            writer.add_image(f"weak/{case_id}/{name}", np.clip(panel, 0, 1)[None], step)
        writer.add_text(f"weak/{case_id}", f"slice {d} (axial, RAS), classifier probability "
                        f"{float(maps['probabilities'][d].max()):.3f}", step)
    writer.flush()
