import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SliceInferer, SlidingWindowInferer

from bundle.priors.settings import PriorSettings
from bundle.workflows.common.inputs import inference_cases
from bundle.workflows.segmentation import workflow as W


def _nifti(path, data=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.uint8) if data is None else data, np.eye(4)), str(path))
    return str(path)


@pytest.mark.parametrize("mode, expected", [("add", True), ("channels", True), ("concat", True), ("none", False)])
def test_uses_priors(mode, expected):
    assert W.uses_priors(mode) is expected


def test_flags_reject_typos():
    with pytest.raises(ValueError, match="none"):
        W.uses_priors("nnoe")
    with pytest.raises(ValueError):
        W.is_slice_network(4)


def test_keys_and_modes():
    assert W.data_keys("concat") == ["image", "prior", "label"]
    assert W.data_keys("none") == ["image", "label"]
    assert W.data_keys("add", label=False) == ["image", "prior"]
    assert W.interp_modes("channels") == ["bilinear", "bilinear", "nearest"]
    assert W.interp_modes("none", label=False) == ["bilinear"]


def test_shapes_and_samples():
    assert W.crop_size([64, 48, 32], 2) == [64, 48, 1]
    assert W.crop_size([64, 48, 32], 3) == [64, 48, 32]
    assert W.samples_per_volume(2, 16, 2) == 16 and W.samples_per_volume(3, 16, 2) == 2
    with pytest.raises(ValueError, match="three positive sizes"):
        W.crop_size([64, 64], 2)
    with pytest.raises(ValueError, match=">= 1"):
        W.samples_per_volume(3, 16, 0)


def test_volume_inferer():
    slice_inferer = W.volume_inferer(2, [16, 16, 8], sw_batch_size=3)
    assert isinstance(slice_inferer, SliceInferer) and slice_inferer.spatial_dim == 2
    window = W.volume_inferer(3, [16, 16, 8])
    assert isinstance(window, SlidingWindowInferer) and tuple(window.roi_size) == (16, 16, 8)
    net2d = torch.nn.Conv2d(2, 3, 1)
    assert slice_inferer(torch.rand(1, 2, 20, 20, 5), net2d).shape == (1, 3, 20, 20, 5)


def test_load_datalist_keeps_workflow_keys(tmp_path):
    case = tmp_path / "BraTS_1"
    _nifti(case / "a.nii.gz")
    datalist = {"testing": [{"case_id": "BraTS_1", "image": ["BraTS_1/a.nii.gz"], "label": "BraTS_1/a.nii.gz",
                             "slice_labels": {"1": [0, 1]}, "num_slices": 2}]}
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(datalist))
    (entry,) = W.load_datalist(path, "testing", tmp_path)
    assert entry == {"case_id": "BraTS_1", "image": [str(case / "a.nii.gz")], "label": str(case / "a.nii.gz")}
    with pytest.raises(ValueError, match="validation"):
        W.load_datalist(path, "validation", tmp_path)
    with pytest.raises(FileNotFoundError, match="prepare_datalist"):
        W.load_datalist(tmp_path / "missing.json", "testing", tmp_path)


def test_load_datalist_checks_cases_first(tmp_path):
    """A case whose label sits on another grid stops the run when the datalist is read, naming the label."""
    image = _nifti(tmp_path / "x" / "x_t1.nii.gz")
    _nifti(tmp_path / "x" / "x_seg.nii.gz", np.zeros((4, 4, 3), np.uint8))
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": [{"image": ["x/x_t1.nii.gz"], "label": "x/x_seg.nii.gz"}]}))
    with pytest.raises(ValueError, match=r"x_seg.nii.gz: label shape \(4, 4, 3\) does not match .*x_t1.nii.gz"):
        W.load_datalist(path, "training", tmp_path)
    # inference reads no label: only the image is checked
    assert W.load_datalist(path, "training", tmp_path, keys=("image",)) == [{"image": [image]}]


def test_inference_cases_of_files_and_patterns(tmp_path):
    for name in ("volume-1.nii", "volume-2.nii"):
        _nifti(tmp_path / name)
    items = inference_cases(str(tmp_path / "volume-*.nii"))
    assert [i["case_id"] for i in items] == ["volume-1", "volume-2"]
    case = tmp_path / "BraTS_7"
    files = [_nifti(case / f"BraTS_7_{m}.nii.gz") for m in ("flair", "t1", "t1ce", "t2")]
    assert inference_cases([files]) == [{"case_id": "BraTS_7", "image": files}]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        inference_cases(str(tmp_path / "*.mha"))
    with pytest.raises(FileNotFoundError, match="nope.nii: cannot be read: the file does not exist"):
        inference_cases([str(tmp_path / "nope.nii")])
    (tmp_path / "empty.nii").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.nii: cannot be read: the file is empty"):
        inference_cases([str(tmp_path / "empty.nii")])
    with pytest.raises(ValueError, match="datalist"):
        inference_cases(None)


def test_inference_cases_of_a_datalist_section_skip_the_unread_label(tmp_path):
    _nifti(tmp_path / "imagesTs" / "a.nii.gz")
    datalist = tmp_path / "datalist.json"
    # the label is not there: inference does not read it, so it does not refuse the case for it
    datalist.write_text(json.dumps({"testing": [{"case_id": "case_a", "image": "imagesTs/a.nii.gz",
                                                 "label": "labelsTs/a.nii.gz"}]}))
    assert inference_cases(None, str(datalist), "testing", str(tmp_path)) == [
        {"case_id": "case_a", "image": str(tmp_path / "imagesTs" / "a.nii.gz")}]
    assert inference_cases([], str(datalist), "testing", str(tmp_path))[0]["case_id"] == "case_a"


def test_prior_description():
    fallback = W.prior_description("add", PriorSettings(sam_model_type="fallback").mask_generator())
    assert fallback["generator"] == "region_proposals" and not fallback["is_sam"]
    assert "NOT SAM priors" in fallback["note"]
    sam = W.prior_description("concat", PriorSettings().mask_generator("cpu"))
    assert sam["is_sam"] and sam["generator"] == "sam_box_grid_masks"
    assert "box grid" in sam["note"] and "lite_medsam" in sam["note"]
    assert sam["signature"]["sam"]["checkpoint_sha256"].startswith("79d8c9dca6db")
    raw = W.prior_description("none", None)
    assert raw["generator"] is None and "raw baseline" in raw["note"]
    with pytest.raises(ValueError, match="mask generator"):
        W.prior_description("concat", None)
    json.dumps(fallback)
