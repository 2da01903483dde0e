"""Every preset with a 2D and a 3D network through train -> evaluate -> infer, covering the other ``prior_mode`` /
``train_mode`` / ``infer_mode`` values on the way (about 1 s per case on an idle 2-core machine, 5-15 s when the cores
are shared, so it stays in the default tier)."""

from __future__ import annotations

import pytest

from workflow_utils import check_predictions, check_summary, check_training_outputs, evaluate, infer, train

#: (preset, spatial_dims, extra config keys); the default prior_mode of each preset unless given
MATRIX = [
    ("brats", 2, {"train_mode": "alternate"}),
    ("brats", 3, {"prior_mode": "none"}),
    ("lits", 2, {"prior_mode": "channels"}),
    ("lits", 3, {"train_mode": "blend", "blend_beta": 0.5}),
    ("abdomenct1k", 2, {"prior_mode": "none"}),
    ("abdomenct1k", 3, {}),
]
CLASSES = {"brats": ["WT", "TC", "ET"], "lits": ["liver", "tumour"],
           "abdomenct1k": ["liver", "kidney", "spleen", "pancreas"]}
LABELS = {"brats": {0, 1, 2, 4}, "lits": {0, 1, 2}, "abdomenct1k": {0, 1, 2, 3, 4}}
DEFAULT_MODE = {"brats": "concat", "lits": "add", "abdomenct1k": "add"}
IMAGE_CHANNELS = {"brats": ["FLAIR", "T1", "T1ce", "T2"], "lits": ["CT"], "abdomenct1k": ["CT"]}


def _channel_names(preset: str, prior_mode: str) -> list[str]:
    image = IMAGE_CHANNELS[preset]
    if prior_mode == "none":
        return image
    if prior_mode == "add":
        return image + [f"{image[0]}+sam_seg_prior", f"{image[0]}+sam_boundary_prior"]
    return image + ["sam_seg_prior", "sam_boundary_prior"]


@pytest.mark.parametrize("preset, spatial_dims, extra", MATRIX, ids=[f"{p}-{d}d" for p, d, _ in MATRIX])
def test_preset_train_evaluate_infer(preset, spatial_dims, extra, phantom_set, tmp_path):
    data = phantom_set(preset)
    keys = {"spatial_dims": spatial_dims, **extra}
    prior_mode = keys.get("prior_mode", DEFAULT_MODE[preset])
    train(data, tmp_path, **keys)
    text = check_training_outputs(tmp_path, CLASSES[preset], _channel_names(preset, prior_mode))
    generator = None if prior_mode == "none" else "region_proposals"
    assert (generator or "raw baseline") in text
    check_summary(evaluate(data, tmp_path, **keys), CLASSES[preset], prior_mode, generator)
    if prior_mode != "none":
        raw = evaluate(data, tmp_path, infer_mode="raw", **keys)
        assert raw["tags"]["infer_mode"] == "raw"
    infer(data, tmp_path)  # the model card alone says how
    check_predictions(data, tmp_path, LABELS[preset])
