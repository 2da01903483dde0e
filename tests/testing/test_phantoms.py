"""Tests of the phantom generator: layouts, geometry through MONAI, labels, HU, determinism, DICOM round trip."""

from __future__ import annotations

import json
import logging
import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation
from scipy import ndimage

from bundle.testing import phantom_writers
from bundle.testing.dicom_series import read_series, write_ct_series
from bundle.testing.phantom_writers import DATASETS, make_phantoms
from bundle.testing.phantoms_cli import main

SIZE, CASES = 32, 3

# the exact relative paths written for CASES = 3 (spelled out here rather than derived from the code under test)
BRATS19 = [("HGG", "BraTS19_PH_0001_1"), ("LGG", "BraTS19_PH_0002_1"), ("HGG", "BraTS19_PH_0003_1")]
LAYOUT_CASES = [
    (
        "brats2019",
        [f"{g}/{c}/{c}_{m}.nii.gz" for g, c in BRATS19 for m in ("flair", "t1", "t1ce", "t2", "seg")],
    ),
    (
        "brats2021",
        [f"{c}/{c}_{m}.nii.gz" for c in ("BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003")
         for m in ("flair", "t1", "t1ce", "t2", "seg")],
    ),
    (
        "brats2023",
        [f"{c}/{c}-{m}.nii.gz" for c in ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000", "BraTS-GLI-00003-000")
         for m in ("t2f", "t1n", "t1c", "t2w", "seg")],
    ),
    ("lits", [f"{k}-{n}.nii" for n in range(3) for k in ("volume", "segmentation")]),
    (
        "abdomenct1k",
        [f"Case_0000{n}_0000.nii.gz" for n in (1, 2, 3)] + [f"Mask/Case_0000{n}.nii.gz" for n in (1, 2, 3)],
    ),
    (
        "msd",
        ["dataset.json"] + [f"{d}/liver_{n}.nii.gz" for n in range(3) for d in ("imagesTr", "labelsTr")],
    ),
]
LABEL_SETS = {
    "brats2019": {0, 1, 2, 4},
    "brats2021": {0, 1, 2, 4},
    "brats2023": {0, 1, 2, 3},
    "lits": {0, 1, 2},
    "abdomenct1k": {0, 1, 2, 3, 4},
    "msd": {0, 1, 2},
    "msd_spleen": {0, 1},
}
ET_LABEL = {"brats2019": 4, "brats2021": 4, "brats2023": 3}
LOAD_RAS = Compose([LoadImage(image_only=True), EnsureChannelFirst(), Orientation(axcodes="RAS")])


@pytest.fixture(scope="module")
def phantom_sets(tmp_path_factory):
    """Every dataset written once (size 32, 3 cases; the CT sets with --dicom)."""
    root = tmp_path_factory.mktemp("phantoms")
    return {
        name: (root / name, make_phantoms(name, root / name, cases=CASES, size=SIZE, seed=7, dicom=True))
        for name in DATASETS
    }


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("dataset, expected", LAYOUT_CASES)
def test_layout(phantom_sets, dataset, expected):
    root, cases = phantom_sets[dataset]
    files = [f for f in _files(root) if not f.startswith("dicom/")]
    assert files == sorted(expected)
    assert not [f for f in _files(root) if os.path.basename(f).startswith(".")], "temporary files left behind"
    for case in cases:
        assert case.label.is_file() and all(p.is_file() for p in case.images.values())


def test_layout_msd_dataset_json(phantom_sets):
    root, _ = phantom_sets["msd"]
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["tensorImageSize"] == "3D" and meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "liver", "2": "cancer"}
    assert meta["numTraining"] == CASES and meta["test"] == []
    assert meta["training"][1] == {"image": "./imagesTr/liver_1.nii.gz", "label": "./labelsTr/liver_1.nii.gz"}
    for entry in meta["training"]:
        assert (root / entry["image"]).is_file() and (root / entry["label"]).is_file()


def test_brats2019_groups(phantom_sets):
    _, cases = phantom_sets["brats2019"]
    assert [c.group for c in cases] == ["HGG", "LGG", "HGG"]


@pytest.mark.parametrize("dataset", DATASETS)
def test_geometry_through_monai(phantom_sets, dataset):
    _, cases = phantom_sets[dataset]
    for case in cases:
        spacing = np.linalg.norm(case.affine[:3, :3], axis=0)
        for path in [*case.images.values(), case.label]:
            img = nib.load(path)
            assert img.shape == case.shape
            np.testing.assert_allclose(img.affine, case.affine, atol=1e-6)
            assert img.header["sform_code"] == 1 and img.header["qform_code"] == 1
            loaded = LOAD_RAS(str(path))
            np.testing.assert_allclose(loaded.affine.numpy(), nib.as_closest_canonical(img).affine, atol=1e-5)
            np.testing.assert_allclose(sorted(loaded.pixdim.tolist()), sorted(spacing), atol=1e-5)
            assert nib.aff2axcodes(loaded.affine.numpy()) == ("R", "A", "S")
        if dataset.startswith("brats"):
            expected = np.diag([-1.0, -1.0, 1.0, 1.0])
            expected[1, 3] = SIZE - 1
            np.testing.assert_array_equal(case.affine, expected)
        else:
            assert 0.6 - 1e-6 <= spacing[0] <= 0.9 + 1e-6 and 1.5 - 1e-6 <= spacing[2] <= 5.0 + 1e-6
            assert spacing[0] == pytest.approx(spacing[1])
            assert np.abs(case.affine[:3, 3]).max() > 10, "expected an origin offset"
    assert len({c.shape[2] for c in cases}) == len(cases), "slice counts should vary between cases"


@pytest.mark.parametrize(
    "dataset, axcodes",
    [("lits", ("L", "P", "S")), ("abdomenct1k", ("L", "P", "I")), ("msd", ("R", "A", "S"))],
)
def test_ct_orientations(phantom_sets, dataset, axcodes):
    _, cases = phantom_sets[dataset]
    oblique = cases[0].affine[:3, :3]
    assert np.abs(oblique - np.diag(np.diag(oblique))).max() > 1e-3, "case 0 should be oblique"
    assert nib.aff2axcodes(cases[1].affine) == ("L", "P", "S")
    assert nib.aff2axcodes(cases[2].affine) == axcodes


@pytest.mark.parametrize("dataset", DATASETS)
def test_labels(phantom_sets, dataset):
    _, cases = phantom_sets[dataset]
    seen = set()
    for case in cases:
        lab = np.asarray(nib.load(case.label).dataobj)
        values = set(np.unique(lab).tolist())
        assert values <= LABEL_SETS[dataset]
        seen |= values
        per_slice = (lab > 0).any(axis=(0, 1))
        assert per_slice.any() and not per_slice.all(), "need slices with and without foreground"
        assert not per_slice[0] and not per_slice[-1]
    assert seen == LABEL_SETS[dataset], "every label should occur in the dataset"


@pytest.mark.parametrize("dataset", ["brats2019", "brats2021", "brats2023"])
def test_brats_nested_regions(phantom_sets, dataset):
    _, cases = phantom_sets[dataset]
    et_label, ball = ET_LABEL[dataset], ndimage.generate_binary_structure(3, 1)
    volumes = []
    for case in cases:
        lab = np.asarray(nib.load(case.label).dataobj)
        wt, tc, et = lab > 0, (lab == 1) | (lab == et_label), lab == et_label
        assert tc.any() and (wt & ~tc).any()
        # the core is wrapped in oedema, and the enhancing rim lies inside the tumour
        assert not (ndimage.binary_dilation(tc, ball) & ~wt).any()
        assert not (ndimage.binary_dilation(et, ball) & ~wt).any()
        if et.any():
            assert not (ndimage.binary_dilation(lab == 1, ball) & ~tc).any(), "necrosis inside the enhancing rim"
        volumes.append(wt.sum())
    assert volumes[2] < 0.6 * min(volumes[:2]), "case index 2 has a small tumour"
    lgg = [c for c in cases if c.group == "LGG"]
    for case in lgg:
        assert et_label not in np.unique(np.asarray(nib.load(case.label).dataobj))


def test_brats_contrasts(phantom_sets):
    case = phantom_sets["brats2019"][1][0]
    lab = np.asarray(nib.load(case.label).dataobj)
    img = {m: np.asarray(nib.load(p).dataobj).astype(np.float32) for m, p in case.images.items()}
    assert list(img) == ["flair", "t1", "t1ce", "t2"]
    assert np.asarray(nib.load(case.images["t1"]).dataobj).dtype == np.int16
    # normal brain: the slices without tumour, inside the head, excluding the outer rings
    normal = np.zeros_like(lab, bool)
    normal[SIZE // 2 - 6 : SIZE // 2 + 6, SIZE // 2 - 6 : SIZE // 2 + 6, :] = True
    normal &= ~ndimage.binary_dilation(lab > 0, iterations=2)
    ed, et, ncr = lab == 2, lab == 4, lab == 1
    assert img["flair"][ed].mean() > 1.5 * img["flair"][normal].mean()
    assert img["t1"][ncr | et].mean() < img["t1"][normal].mean()
    assert img["t1ce"][et].mean() > 1.5 * img["t1ce"][normal].mean()
    assert img["t2"][ed].mean() > 1.4 * img["t2"][normal].mean()
    for volume in img.values():
        assert volume[0, 0, :].max() == 0 and volume.min() >= 0, "background outside the head is 0"


def test_ct_hounsfield_units(tmp_path):
    (case,) = make_phantoms("abdomenct1k", tmp_path / "a", cases=1, size=64, seed=1)
    (lits_case,) = make_phantoms("lits", tmp_path / "l", cases=1, size=64, seed=1)
    hu = np.asarray(nib.load(case.images["ct"]).dataobj)
    assert hu.dtype == np.int16 and -1024 <= hu.min() and hu.max() <= 3071
    lab = np.asarray(nib.load(case.label).dataobj)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)

    def interior_mean(image, mask):
        inner = ndimage.binary_erosion(mask, in_plane)
        return image[inner if inner.sum() > 20 else mask].mean()

    for label, (low, high) in {1: (45, 75), 2: (15, 45), 3: (30, 60), 4: (25, 55)}.items():
        assert low <= interior_mean(hu, lab == label) <= high, label
    assert abs(hu[:3, :3].mean() + 1000) < 20, "air outside the body"
    assert np.percentile(hu, 99.9) >= 400, "bone"
    liver = ndimage.binary_erosion(lab == 1, in_plane, iterations=2)
    assert 8 <= hu[liver].std() <= 30, "noise and texture"
    lits_hu = np.asarray(nib.load(lits_case.images["ct"]).dataobj)
    lits_lab = np.asarray(nib.load(lits_case.label).dataobj)
    assert lits_hu[lits_lab == 2].mean() < interior_mean(lits_hu, lits_lab == 1) - 15, "hypodense tumours"


def test_ct_tumour_free_case(phantom_sets):
    _, cases = phantom_sets["lits"]
    tumour = [bool((np.asarray(nib.load(c.label).dataobj) == 2).any()) for c in cases]
    assert tumour == [True, False, True]


def _arrays(cases):
    return [np.asarray(nib.load(p).dataobj) for c in cases for p in [*c.images.values(), c.label]]


@pytest.mark.parametrize("dataset", ["abdomenct1k", "brats2021"])
def test_seed_determinism(tmp_path, dataset):
    a = make_phantoms(dataset, tmp_path / "a", cases=2, size=SIZE, seed=3)
    b = make_phantoms(dataset, tmp_path / "b", cases=2, size=SIZE, seed=3)
    c = make_phantoms(dataset, tmp_path / "c", cases=2, size=SIZE, seed=4)
    prefix = make_phantoms(dataset, tmp_path / "d", cases=1, size=SIZE, seed=3)
    for x, y in zip(_arrays(a), _arrays(b)):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert (a[0].label.read_bytes() == b[0].label.read_bytes()), "gzip without timestamps: identical files"
    assert not any(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(_arrays(a), _arrays(c)))
    for x, y in zip(_arrays(prefix), _arrays(a[:1])):
        assert np.array_equal(x, y), "a case depends on (seed, dataset, index) only"


def test_atomic_writes(tmp_path, monkeypatch):
    replaced = []
    real_replace = os.replace

    def spy(src, dst):
        assert os.path.dirname(os.fspath(src)) == os.path.dirname(os.fspath(dst))
        replaced.append(os.fspath(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    make_phantoms("msd", tmp_path, cases=2, size=16, seed=0, dicom=True)
    assert sorted(replaced) == sorted(str(tmp_path / f) for f in _files(tmp_path))


@pytest.mark.parametrize("dataset", ["lits", "abdomenct1k", "msd"])
def test_dicom_series_tags(phantom_sets, dataset):
    root, cases = phantom_sets[dataset]
    case = cases[0]
    assert case.dicom_dir == root / "dicom" / case.case_id and all(c.dicom_dir is None for c in cases[1:])
    files = sorted(case.dicom_dir.iterdir())
    assert [f.name for f in files] == [f"IM_{k + 1:04d}.dcm" for k in range(case.shape[2])]
    first, last = pydicom.dcmread(files[0]), pydicom.dcmread(files[-1])
    assert first.SOPClassUID == pydicom.uid.CTImageStorage and first.Modality == "CT"
    assert (first.Rows, first.Columns) == (case.shape[1], case.shape[0])
    spacing = np.linalg.norm(case.affine[:3, :3], axis=0)
    np.testing.assert_allclose([float(v) for v in first.PixelSpacing], [spacing[1], spacing[0]], atol=1e-6)
    assert float(first.SliceThickness) == pytest.approx(spacing[2]) == float(first.SpacingBetweenSlices)
    assert (first.RescaleSlope, first.RescaleIntercept) == (1, -1024)
    assert (first.InstanceNumber, last.InstanceNumber) == (1, case.shape[2])
    assert first.SeriesInstanceUID == last.SeriesInstanceUID and first.SOPInstanceUID != last.SOPInstanceUID
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ case.affine
    np.testing.assert_allclose([float(v) for v in last.ImagePositionPatient], lps[:3] @ [0, 0, case.shape[2] - 1, 1],
                               atol=1e-4)


def test_dicom_uids_deterministic(tmp_path):
    a = make_phantoms("lits", tmp_path / "a", cases=1, size=16, seed=5, dicom=True)[0]
    b = make_phantoms("lits", tmp_path / "b", cases=1, size=16, seed=5, dicom=True)[0]
    c = make_phantoms("lits", tmp_path / "c", cases=1, size=16, seed=6, dicom=True)[0]
    uid = [pydicom.dcmread(next(x.dicom_dir.glob("*.dcm"))).StudyInstanceUID for x in (a, b, c)]
    assert uid[0] == uid[1] != uid[2]


@pytest.mark.parametrize("reader", ["PydicomReader", "ITKReader"])
@pytest.mark.parametrize("dataset", ["lits", "abdomenct1k"])
def test_dicom_round_trip(phantom_sets, dataset, reader):
    case = phantom_sets[dataset][1][0]
    nifti = LOAD_RAS(str(case.images["ct"]))
    dicom = Compose([LoadImage(image_only=True, reader=reader), EnsureChannelFirst(), Orientation("RAS")])(
        str(case.dicom_dir)
    )
    assert dicom.shape == nifti.shape
    np.testing.assert_allclose(dicom.affine.numpy(), nifti.affine.numpy(), atol=1e-3)
    np.testing.assert_allclose(dicom.pixdim.numpy(), nifti.pixdim.numpy(), atol=1e-3)
    np.testing.assert_array_equal(dicom.numpy().astype(np.float32), nifti.numpy().astype(np.float32))


def test_dicom_reader_independent(phantom_sets):
    case = phantom_sets["lits"][1][0]
    values, affine = read_series(case.dicom_dir)
    np.testing.assert_allclose(affine, case.affine, atol=1e-4)
    np.testing.assert_array_equal(values, np.asarray(nib.load(case.images["ct"]).dataobj).astype(np.float32))


@pytest.mark.parametrize("reader", ["PydicomReader", "ITKReader"])
def test_dicom_rows_columns_order(tmp_path, reader):
    """A non-square volume with different x/y spacing and inferior-going slices catches row/column swaps."""
    hu = (np.arange(20 * 12 * 5).reshape(20, 12, 5) % 2000 - 1000).astype(np.int16)
    affine = np.array([[-0.5, 0, 0, 30.0], [0, -0.8, 0, -12.0], [0, 0, -2.5, 100.0], [0, 0, 0, 1]])
    write_ct_series(hu, affine, tmp_path, uid_seed="rows-columns")
    first = pydicom.dcmread(tmp_path / "IM_0001.dcm")
    assert (first.Rows, first.Columns) == (12, 20)
    assert [float(v) for v in first.PixelSpacing] == [0.8, 0.5]
    got = Compose([LoadImage(image_only=True, reader=reader), EnsureChannelFirst(), Orientation("RAS")])(
        str(tmp_path)
    )
    want = Orientation("RAS")(EnsureChannelFirst(channel_dim="no_channel")(_meta_tensor(hu, affine)))
    np.testing.assert_allclose(got.affine.numpy(), want.affine.numpy(), atol=1e-4)
    np.testing.assert_array_equal(got.numpy().astype(np.float32), want.numpy().astype(np.float32))


def _meta_tensor(array, affine):
    return MetaTensor(array.astype(np.float32), affine=affine)


def test_dicom_rejects_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="does not fit"):
        write_ct_series(np.full((4, 4, 2), -2000, np.int16), np.eye(4), tmp_path, uid_seed="x")


def test_cli(tmp_path, capsys):
    assert main(["--dataset", "lits", "--out", str(tmp_path), "--cases", "1", "--size", "16", "--dicom"]) == 0
    assert (tmp_path / "volume-0.nii").is_file() and (tmp_path / "dicom" / "volume-0" / "IM_0001.dcm").is_file()
    assert "volume-0" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--dataset", "lits", "--out", str(tmp_path), "--size", "8"])
    with pytest.raises(SystemExit):
        main(["--dataset", "litz", "--out", str(tmp_path)])


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'brats2021'"):
        make_phantoms("brats_2021", tmp_path)
    with pytest.raises(ValueError, match="cases"):
        make_phantoms("lits", tmp_path, cases=0)


def test_dicom_ignored_for_brats(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=phantom_writers.__name__):
        (case,) = make_phantoms("brats2023", tmp_path, cases=1, size=16, dicom=True)
    assert "ignored" in caplog.text and case.dicom_dir is None and not (tmp_path / "dicom").exists()
