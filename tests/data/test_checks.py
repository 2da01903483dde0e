"""Tests of bundle.data.checks: every bad input gives an InputError naming the file and the problem."""

from __future__ import annotations

import pickle

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged

from bundle.data.checks import (
    CheckCase,
    CheckCased,
    InputError,
    LoadCheckedImaged,
    check_case,
    check_image_file,
    check_label,
)

SHAPE = (8, 8, 6)
BRATS_LABELS = (0, 1, 2, 4)


def write_nifti(path, data=None, affine=None):
    path = str(path)
    data = np.zeros(SHAPE, np.float32) if data is None else data
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def good_label():
    label = np.zeros(SHAPE, np.uint8)
    label[2:4, 2:4, 1:3] = 1
    label[4:6, 4:6, 3] = 4
    return label


@pytest.fixture
def case(tmp_path):
    """A good case: two modalities and a label on one grid."""
    images = [write_nifti(tmp_path / f"x_{m}.nii.gz", np.random.rand(*SHAPE).astype(np.float32)) for m in ("t1", "t2")]
    return images, write_nifti(tmp_path / "x_seg.nii.gz", good_label())


def assert_input_error(info, path, *fragments):
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, message


# ------------------------------------------------------------------------------------------- unreadable files


def _truncated_gz(tmp_path):
    good = write_nifti(tmp_path / "good.nii.gz", np.random.rand(*SHAPE).astype(np.float32))
    data = open(good, "rb").read()
    (tmp_path / "trunc.nii.gz").write_bytes(data[: len(data) // 2])
    return tmp_path / "trunc.nii.gz"


def _truncated_nii(tmp_path):
    good = write_nifti(tmp_path / "good.nii", np.random.rand(*SHAPE).astype(np.float32))
    (tmp_path / "trunc.nii").write_bytes(open(good, "rb").read()[:400])
    return tmp_path / "trunc.nii"


def _text_file(tmp_path):
    (tmp_path / "notes.nii.gz").write_text("this is not an image\n")
    return tmp_path / "notes.nii.gz"


def _empty_file(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    return tmp_path / "empty.nii.gz"


@pytest.mark.parametrize(
    "make, fragment, chained",
    [
        (_truncated_gz, "truncated or corrupt", True),
        (_truncated_nii, "truncated or corrupt", True),
        (_text_file, "not gzip-compressed", True),
        (_empty_file, "empty (0 bytes)", False),
        (lambda p: p / "missing.nii.gz", "does not exist", False),
    ],
)
def test_check_image_file_unreadable(tmp_path, make, fragment, chained):
    path = make(tmp_path)
    with pytest.raises(InputError) as info:
        check_image_file(path)
    assert_input_error(info, path, "cannot be read", fragment)
    assert "Traceback" not in str(info.value) and len(str(info.value)) < 400
    assert (info.value.__cause__ is not None) == chained
    assert info.value.path == str(path)


def test_check_image_file_reads_good_file(case):
    image = check_image_file(case[1])
    assert tuple(image.shape) == SHAPE and image.meta["filename_or_obj"] == case[1]


def test_input_error_pickles():
    err = pickle.loads(pickle.dumps(InputError("/x/a.nii.gz", "is bad")))
    assert str(err) == "/x/a.nii.gz: is bad" and err.path == "/x/a.nii.gz" and err.problem == "is bad"


# ----------------------------------------------------------------------------------------------- case checks


def test_good_case_passes_in_every_form(case):
    images, label = case
    check_case(images, label, BRATS_LABELS)
    loaded = [LoadImage(image_only=True)(p) for p in images]
    check_case(loaded, LoadImage(image_only=True, ensure_channel_first=True)(label), BRATS_LABELS)
    stacked = LoadImage(image_only=True)(images)  # several files stacked channel-first
    check_case(stacked, label, BRATS_LABELS)
    check_case(np.random.rand(*SHAPE), good_label()[None], BRATS_LABELS)  # plain arrays, with and without channel
    check_label(label, BRATS_LABELS)


def test_2d_image(tmp_path):
    path = write_nifti(tmp_path / "flat.nii.gz", np.zeros((8, 8), np.float32))
    with pytest.raises(InputError) as info:
        check_case(path)
    assert_input_error(info, path, "shape (8, 8)", "2D", "expected a 3D volume")


def test_4d_time_series(tmp_path):
    path = write_nifti(tmp_path / "fmri.nii.gz", np.zeros((*SHAPE, 5), np.float32))
    with pytest.raises(InputError) as info:
        check_case(path)
    assert_input_error(info, path, "shape (8, 8, 6, 5)", "4D series of 5 volumes")
    with pytest.raises(InputError) as info:  # also once channel-first
        check_case(LoadImage(image_only=True, ensure_channel_first=True)(path))
    assert_input_error(info, path, "shape (5, 8, 8, 6)", "4D series of 5 volumes")
    check_case(path, channels=5)  # an MSD-style 4D file with 5 modalities is fine when declared


@pytest.mark.parametrize("bad, fragment", [(np.nan, "3 non-finite values (3 NaN, 0 inf)"),
                                           (np.inf, "3 non-finite values (0 NaN, 3 inf)")])
def test_non_finite(tmp_path, bad, fragment):
    data = np.random.rand(*SHAPE).astype(np.float32)
    data[0, 0, :3] = bad
    path = write_nifti(tmp_path / "bad.nii.gz", data)
    with pytest.raises(InputError) as info:
        check_case(path)
    assert_input_error(info, path, fragment)


def test_label_shape_mismatch(case, tmp_path):
    label = write_nifti(tmp_path / "small_seg.nii.gz", np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(InputError) as info:
        check_case(case[0], label)
    assert_input_error(info, label, "label shape (8, 8, 5) does not match", case[0][0], "(8, 8, 6)")


def test_label_affine_mismatch(case, tmp_path):
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    affine[:3, 3] = (10, 0, 0)
    label = write_nifti(tmp_path / "moved_seg.nii.gz", good_label(), affine)
    with pytest.raises(InputError) as info:
        check_case(case[0], label)
    grids = "spacing (1.0, 1.0, 2.5), origin (10.0, 0.0, 0.0) vs spacing (1.0, 1.0, 1.0), origin (0.0, 0.0, 0.0)"
    assert_input_error(info, label, "label affine differs", case[0][0], grids)


def test_affine_within_tolerance_passes(case, tmp_path):
    affine = np.eye(4)
    affine[0, 3] = 1e-5
    check_case(case[0], write_nifti(tmp_path / "seg.nii.gz", good_label(), affine), BRATS_LABELS)


def test_affine_direction_mismatch(case, tmp_path):
    label = write_nifti(tmp_path / "flipped_seg.nii.gz", good_label(), np.diag([-1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(InputError) as info:
        check_case(case[0], label)
    assert_input_error(info, label, "different axis directions")


def test_modalities_disagree(case, tmp_path):
    other_shape = write_nifti(tmp_path / "x_flair.nii.gz", np.zeros((8, 8, 7), np.float32))
    with pytest.raises(InputError) as info:
        check_case([case[0][0], other_shape])
    assert_input_error(info, other_shape, "modality shape (8, 8, 7) does not match", case[0][0])

    other_grid = write_nifti(tmp_path / "x_t1ce.nii.gz", np.zeros(SHAPE, np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(InputError) as info:
        check_case([case[0][0], other_grid])
    assert_input_error(info, other_grid, "modality affine differs", "spacing (2.0, 2.0, 2.0)")


def test_stacked_modalities_name_the_bad_file(case, tmp_path):
    data = np.random.rand(*SHAPE).astype(np.float32)
    data[1, 1, 1] = np.nan
    bad = write_nifti(tmp_path / "x_t1ce.nii.gz", data)
    files = [case[0][0], bad, case[0][1]]
    with pytest.raises(InputError) as info:  # the loader checks what it loaded
        LoadCheckedImaged(keys="image", ensure_channel_first=True)({"image": files})
    assert_input_error(info, bad, "1 non-finite values (1 NaN")
    stacked = LoadCheckedImaged(keys="image", ensure_channel_first=True, check=False)({"image": files})["image"]
    with pytest.raises(InputError) as info:
        CheckCased()({"image": stacked})
    assert_input_error(info, bad, "1 non-finite values (1 NaN")
    with pytest.raises(InputError) as info:  # plain LoadImage keeps only the first name: say which stacked file
        check_case(LoadImage(image_only=True)(files))
    assert_input_error(info, case[0][0], "(stacked file 2 of 3)", "1 non-finite values")


def test_label_values_outside_set(case, tmp_path):
    data = good_label()
    data[0, 0, 0], data[0, 1, 0] = 3, 7
    label = write_nifti(tmp_path / "odd_seg.nii.gz", data)
    with pytest.raises(InputError) as info:
        check_case(case[0], label, BRATS_LABELS)
    assert_input_error(info, label, "label values [3, 7] are not in the label set [0, 1, 2, 4]")


def test_label_not_integer(case, tmp_path):
    data = good_label().astype(np.float32)
    data[0, 0, 0] = 0.5
    label = write_nifti(tmp_path / "soft_seg.nii.gz", data)
    with pytest.raises(InputError) as info:
        check_case(case[0], label, BRATS_LABELS)
    assert_input_error(info, label, "label is not integer-valued", "1 voxels", "0.5")


def test_in_memory_arrays_are_described():
    with pytest.raises(InputError, match=r"^<image 0>: has shape \(8, 8\)"):
        check_case(np.zeros((8, 8)))
    with pytest.raises(InputError, match=r"^<label>: label shape \(8, 8, 5\)"):
        check_case(torch.zeros(SHAPE), torch.zeros((8, 8, 5)))


# ------------------------------------------------------------------------------------------- dictionary transforms


def test_load_checked_imaged_matches_load_imaged(case):
    images, label = case
    data = {"image": images, "label": label}
    ours = LoadCheckedImaged(keys=["image", "label"], ensure_channel_first=True)(data)
    theirs = LoadImaged(keys=["image", "label"], ensure_channel_first=True)(data)
    for key in ("image", "label"):
        assert isinstance(ours[key], MetaTensor)
        assert torch.equal(ours[key].as_tensor(), theirs[key].as_tensor())


def test_load_checked_imaged_names_unreadable_file(case, tmp_path):
    broken = _truncated_gz(tmp_path)
    with pytest.raises(InputError) as info:
        LoadCheckedImaged(keys=["image", "label"])({"image": [case[0][0], str(broken)], "label": case[1]})
    assert_input_error(info, broken, "cannot be read", "truncated")
    assert info.value.__cause__ is not None


def test_check_cased_pipeline(case, tmp_path):
    images, label = case
    pipeline = Compose([
        LoadCheckedImaged(keys=["image", "label"]),
        EnsureChannelFirstd(keys=["image", "label"]),
        CheckCased(keys="image", label_key="label", label_values=BRATS_LABELS),
    ])
    out = pipeline({"image": images, "label": label})
    assert tuple(out["image"].shape) == (2, *SHAPE)

    data = good_label()
    data[0, 0, 0] = 9
    bad_label = write_nifti(tmp_path / "nine_seg.nii.gz", data)
    with pytest.raises(Exception) as info:  # Compose wraps transform errors in RuntimeError
        pipeline({"image": images, "label": bad_label})
    cause = info.value if isinstance(info.value, InputError) else info.value.__cause__
    assert isinstance(cause, InputError)
    assert str(cause).startswith(bad_label) and "label values [9]" in str(cause)


def test_check_cased_keys_are_modalities(case, tmp_path):
    other = write_nifti(tmp_path / "x_flair.nii.gz", np.zeros((8, 8, 7), np.float32))
    loader = LoadCheckedImaged(keys=["t1", "flair", "label"], check=False)
    data = loader({"t1": case[0][0], "flair": other, "label": case[1]})
    with pytest.raises(InputError, match=f"^{other}: modality shape"):
        CheckCased(keys=["t1", "flair"])(data)


def test_check_cased_missing_keys(case):
    data = {"image": LoadImage(image_only=True)(case[0][0])}
    assert CheckCased(keys=["image", "t2"], allow_missing_keys=True)(data)["image"] is data["image"]
    with pytest.raises(KeyError):
        CheckCased(keys=["image", "t2"])(data)
    assert CheckCased(label_key=None)(data) == data
    assert CheckCase(label_values=BRATS_LABELS)(data["image"]) is data["image"]


def test_load_checked_imaged_names_modality_that_cannot_stack(case, tmp_path):
    other = write_nifti(tmp_path / "x_flair.nii.gz", np.zeros((8, 8, 7), np.float32))
    with pytest.raises(InputError) as info:
        LoadCheckedImaged(keys="image")({"image": [case[0][0], other]})
    assert_input_error(info, other, "modality shape (8, 8, 7) does not match", case[0][0])


# ------------------------------------------------------------------------------------- checks where voxels arrive


def test_loader_finds_inf_in_a_modality_sam_never_sees(tmp_path):
    """Inf voxels in T1 (not the SAM channel): the loader names T1 and the count, before any other transform."""
    rng = np.random.default_rng(0)
    files = [write_nifti(tmp_path / f"x_{m}.nii.gz", rng.random(SHAPE).astype(np.float32))
             for m in ("flair", "t1", "t1ce", "t2")]
    data = rng.random(SHAPE).astype(np.float32)
    data[3, 3, 2:4] = np.inf
    write_nifti(files[1], data)
    label = write_nifti(tmp_path / "x_seg.nii.gz", good_label())
    loader = LoadCheckedImaged(keys=["image", "label"], ensure_channel_first=True, label_values=BRATS_LABELS,
                               image_channels=4)
    with pytest.raises(InputError) as info:
        loader({"image": files, "label": label})
    assert_input_error(info, files[1], "contains 2 non-finite values (0 NaN, 2 inf) of 384")


def test_loader_checks_label_values_and_channels(case, tmp_path):
    images, _ = case
    data = good_label()
    data[0, 0, 0] = 7
    label = write_nifti(tmp_path / "seven_seg.nii.gz", data)
    loader = LoadCheckedImaged(keys=["image", "label"], ensure_channel_first=True, label_values=BRATS_LABELS)
    with pytest.raises(InputError) as info:
        loader({"image": images, "label": label})
    assert_input_error(info, label, "label values [7] are not in the label set [0, 1, 2, 4]")
    with pytest.raises(InputError) as info:
        LoadCheckedImaged(keys="image", image_channels=4)({"image": images[:1]})
    assert_input_error(info, images[0], "has shape (8, 8, 6): 1 channels; expected 4")
    out = LoadCheckedImaged(keys=["image", "label"], ensure_channel_first=True, label_values=BRATS_LABELS,
                            image_channels=2)({"image": images, "label": case[1]})
    assert tuple(out["image"].shape) == (2, *SHAPE)


def test_a_load_failure_of_readable_files_is_named(tmp_path):
    """A failure after every file read fine on its own (here the requested dtype) names the file and the reason."""
    path = tmp_path / "ok.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), path)
    with pytest.raises(InputError, match=r"ok\.nii\.gz: cannot be loaded: .*not_a_dtype"):
        LoadCheckedImaged(keys="image", label_key=None, dtype="not_a_dtype")({"image": str(path)})
