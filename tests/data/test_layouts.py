"""Tests of bundle.data.layouts (and the dataset specs of bundle.data.labels) on tiny synthetic dataset folders."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from bundle.data.labels import BRATS_MODALITIES, DATASETS, get_dataset_spec, msd_spec
from bundle.data.layouts import DatasetLayoutError, discover_cases, scan_dataset

SHAPE = (8, 8, 6)
LEGACY_TOKENS = {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"}
BRATS2023_TOKENS = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}


def write_nifti(path, data=None, affine=None):
    """Write a tiny NIfTI volume (creating folders); returns the path as str."""
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = np.zeros(SHAPE, np.uint8) if data is None else data
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def make_brats_case(root, case_id, release="2021", ext=".nii.gz", skip=(), folder=None):
    """One BraTS case in the layout of ``release`` (2019 puts it under HGG/); ``skip`` lists modalities not written."""
    folder = folder or ({"2019": f"HGG/{case_id}"}.get(release, case_id))
    sep, tokens = ("-", BRATS2023_TOKENS) if release == "2023" else ("_", LEGACY_TOKENS)
    written = {}
    for modality in (*BRATS_MODALITIES, "seg"):
        if modality in skip:
            continue
        token = tokens.get(modality, "seg")
        written[modality] = write_nifti(os.path.join(root, folder, f"{case_id}{sep}{token}{ext}"))
    return written


class ReversedListing:
    """A stand-in for the iterator ``os.scandir`` returns, yielding the real entries in reverse order."""

    def __init__(self, entries):
        self._entries = iter(entries)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._entries)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self):
        pass


@pytest.fixture
def reversed_listing(monkeypatch):
    """Make every folder listing come back in reverse order; counts the calls so tests see it took effect."""
    real_scandir, real_listdir = os.scandir, os.listdir
    calls = {"n": 0}

    def scandir(path="."):
        calls["n"] += 1
        with real_scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name, reverse=True)
        return ReversedListing(entries)

    def listdir(path="."):
        calls["n"] += 1
        return sorted(real_listdir(path), reverse=True)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "listdir", listdir)
    return calls


# ------------------------------------------------------------------------------------------------------- labels.py


def test_dataset_specs():
    assert get_dataset_spec("brats").label_values == (0, 1, 2, 4)
    assert get_dataset_spec("brats2019") is DATASETS["brats"]
    assert get_dataset_spec("brats2023").label_values == (0, 1, 2, 3)
    assert get_dataset_spec("BraTS2023").region("ET") == (3,)
    assert get_dataset_spec("brats").region("WT") == (1, 2, 4)
    assert get_dataset_spec("brats").region("TC") == (1, 4)
    assert get_dataset_spec("lits").region("liver") == (1, 2)
    assert get_dataset_spec("lits").region("tumour") == (2,)
    assert get_dataset_spec("abdomenct1k").labels_json() == {
        "0": "background", "1": "liver", "2": "kidney", "3": "spleen", "4": "pancreas"
    }
    assert get_dataset_spec("abdomenct1k").region("pancreas") == (4,)
    assert DATASETS["brats"].modalities == DATASETS["brats2023"].modalities == ("flair", "t1", "t1ce", "t2")
    assert DATASETS["brats2023"].file_modalities == {"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2"}
    assert DATASETS["lits"].modalities == ("CT",)


def test_unknown_dataset_name_suggests_closest():
    with pytest.raises(ValueError, match="lits"):
        get_dataset_spec("litz")
    with pytest.raises(ValueError, match="WholeTumour.*ET"):
        get_dataset_spec("brats").region("WholeTumour")
    with pytest.raises(ValueError, match="dataset.json"):
        get_dataset_spec("msd")
    with pytest.raises(ValueError, match="brats"):
        discover_cases("bratz", ".")


@pytest.mark.parametrize(
    "labels, channels",
    [
        (
            {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
            {"modality": {"0": "FLAIR", "1": "T1w"}},
        ),
        (
            {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3},
            {"channel_names": {"1": "T1w", "0": "FLAIR"}},
        ),
    ],
)
def test_msd_spec_both_json_forms(labels, channels):
    spec = msd_spec({"labels": labels, **channels})
    assert spec.label_values == (0, 1, 2, 3)
    assert spec.labels[3] == "enhancing tumour"
    assert spec.modalities == ("FLAIR", "T1w")
    assert spec.region("edema") == (1,)


def test_msd_spec_without_labels_names_file(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match=f"{path}.*labels"):
        msd_spec(path)


# ------------------------------------------------------------------------------------------------------- BraTS


@pytest.mark.parametrize(
    "release, ext, layout",
    [("2019", ".nii.gz", "brats2019"), ("2019", ".nii", "brats2019"), ("2021", ".nii.gz", "brats2020-2021"),
     ("2021", ".nii", "brats2020-2021"), ("2023", ".nii.gz", "brats2023"), ("2023", ".nii", "brats2023")],
)
def test_brats_layouts(tmp_path, release, ext, layout):
    written = {cid: make_brats_case(tmp_path, cid, release, ext) for cid in ("Case_2", "Case_10", "Case_1")}
    scan = scan_dataset("brats", tmp_path)
    assert scan.layout == layout
    assert scan.problems == []
    assert [c["case_id"] for c in scan.cases] == ["Case_1", "Case_2", "Case_10"]
    for case in scan.cases:
        files = written[case["case_id"]]
        assert case["image"] == [files[m] for m in ("flair", "t1", "t1ce", "t2")]
        assert case["label"] == files["seg"]
        assert all(os.path.isabs(p) for p in case["image"])
    assert scan.spec.label_values == ((0, 1, 2, 3) if release == "2023" else (0, 1, 2, 4))


def test_brats_mixed_extensions_and_grades(tmp_path):
    make_brats_case(tmp_path, "BraTS19_A_1", "2019", ".nii")
    make_brats_case(tmp_path, "BraTS19_B_2", "2019", ".nii.gz", folder="LGG/BraTS19_B_2")
    cases, problems = discover_cases("brats", tmp_path)
    assert problems == []
    assert {c["case_id"]: c["label"].split(os.sep)[-3] for c in cases} == {"BraTS19_A_1": "HGG", "BraTS19_B_2": "LGG"}


def test_brats_pairing_ignores_listing_order(tmp_path, reversed_listing):
    for cid in ("BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_010"):
        make_brats_case(tmp_path, cid, "2021", ".nii")
    cases, problems = discover_cases("brats", tmp_path)
    assert reversed_listing["n"] > 0
    assert problems == []
    for case in cases:
        cid = case["case_id"]
        assert [os.path.basename(p) for p in case["image"]] == [f"{cid}_{m}.nii" for m in ("flair", "t1", "t1ce", "t2")]
        assert os.path.basename(case["label"]) == f"{cid}_seg.nii"


def test_brats2020_case_355_misnamed_seg(tmp_path):
    cid = "BraTS20_Training_355"
    make_brats_case(tmp_path, cid, "2021", ".nii", skip=("seg",))
    make_brats_case(tmp_path, "BraTS20_Training_354", "2021", ".nii")
    odd = write_nifti(tmp_path / cid / "W39_1998.09.19_Segm.nii")
    with pytest.warns(UserWarning, match="W39_1998.09.19_Segm.nii.*BraTS20_Training_355"):
        cases, problems = discover_cases("brats", tmp_path)
    assert problems == []
    assert {c["case_id"]: c["label"] for c in cases}[cid] == odd


def test_brats_problems_all_listed(tmp_path):
    make_brats_case(tmp_path, "ok_1", "2021")
    make_brats_case(tmp_path, "nomod_2", "2021", skip=("t1ce", "t2"))
    make_brats_case(tmp_path, "noseg_3", "2021", skip=("seg",))
    make_brats_case(tmp_path, "onlyseg_4", "2021", skip=BRATS_MODALITIES)
    make_brats_case(tmp_path, "dup_5", "2021")
    make_brats_case(tmp_path, "dup_5", "2021", folder="copy/dup_5")
    write_nifti(tmp_path / "twice_6" / "twice_6_flair.nii")
    make_brats_case(tmp_path, "twice_6", "2021")
    cases, problems = discover_cases("brats", tmp_path)
    assert [c["case_id"] for c in cases] == ["ok_1"]
    text = "\n".join(problems)
    assert len(problems) == 5, text
    assert "nomod_2" in text and "missing modality t1ce, t2" in text
    assert f"{tmp_path / 'nomod_2' / 'nomod_2_t1ce'}.nii[.gz]" in text
    assert "image without label: case noseg_3" in text and "noseg_3_seg.nii[.gz]" in text
    assert f"label without image: {tmp_path / 'onlyseg_4' / 'onlyseg_4_seg.nii.gz'}" in text
    assert "duplicate case id dup_5" in text and str(tmp_path / "copy" / "dup_5") in text
    assert "duplicate case id twice_6: 2 flair files" in text and "twice_6_flair.nii," in text


def test_brats2023_missing_modality_uses_2023_names(tmp_path):
    make_brats_case(tmp_path, "BraTS-GLI-00001-000", "2023", skip=("t1ce",))
    _, problems = discover_cases("brats", tmp_path)
    assert problems == [
        f"case BraTS-GLI-00001-000 in {tmp_path / 'BraTS-GLI-00001-000'}: missing modality t1c "
        f"(expected {tmp_path / 'BraTS-GLI-00001-000' / 'BraTS-GLI-00001-000'}-t1c.nii[.gz])"
    ]


def test_brats_mixed_releases_rejected(tmp_path):
    make_brats_case(tmp_path, "BraTS2021_00001", "2021")
    make_brats_case(tmp_path, "BraTS-GLI-00001-000", "2023")
    with pytest.raises(DatasetLayoutError, match="mixes BraTS naming styles"):
        discover_cases("brats", tmp_path)


# -------------------------------------------------------------------------------------------- LiTS, AbdomenCT-1K


def test_lits_pairs_by_number_across_batches(tmp_path, reversed_listing):
    # string order would pair volume-10 with segmentation-2; both sit in different batch folders
    v2 = write_nifti(tmp_path / "batch2" / "volume-2.nii")
    v10 = write_nifti(tmp_path / "batch1" / "volume-10.nii")
    s2 = write_nifti(tmp_path / "batch1" / "segmentation-2.nii")
    s10 = write_nifti(tmp_path / "batch2" / "segmentation-10.nii.gz")
    cases, problems = discover_cases("lits", tmp_path)
    assert reversed_listing["n"] > 0
    assert problems == []
    assert cases == [
        {"case_id": "lits_002", "image": v2, "label": s2},
        {"case_id": "lits_010", "image": v10, "label": s10},
    ]


def test_lits_problems(tmp_path):
    write_nifti(tmp_path / "volume-1.nii")
    write_nifti(tmp_path / "segmentation-1.nii")
    write_nifti(tmp_path / "volume-3.nii")
    write_nifti(tmp_path / "segmentation-4.nii")
    write_nifti(tmp_path / "a" / "volume-5.nii")
    write_nifti(tmp_path / "b" / "volume-5.nii.gz")
    write_nifti(tmp_path / "segmentation-5.nii")
    cases, problems = discover_cases("lits", tmp_path)
    assert [c["case_id"] for c in cases] == ["lits_001"]
    where = f"found anywhere under {tmp_path})"
    assert problems == [
        f"image without label: {tmp_path / 'volume-3.nii'} (no segmentation-3.nii[.gz] {where}",
        f"label without image: {tmp_path / 'segmentation-4.nii'} (no volume-4.nii[.gz] {where}",
        f"duplicate case id lits_005: 2 image files: {tmp_path / 'a' / 'volume-5.nii'}, "
        f"{tmp_path / 'b' / 'volume-5.nii.gz'}",
    ]


@pytest.mark.parametrize("mask_dir", ["Mask", "images", "Mask_sibling"])
def test_abdomenct1k_mask_locations(tmp_path, mask_dir):
    image_dir = tmp_path / "AbdomenCT-1K-ImagePart1"
    masks = {"Mask": tmp_path / "Mask", "images": image_dir, "Mask_sibling": tmp_path / "Part1" / "Mask"}[mask_dir]
    images = {n: write_nifti(image_dir / f"Case_{n:05d}_0000.nii.gz") for n in (2, 10)}
    labels = {n: write_nifti(masks / f"Case_{n:05d}.nii.gz") for n in (10, 2)}
    cases, problems = discover_cases("abdomenct1k", tmp_path)
    assert problems == []
    assert cases == [{"case_id": f"Case_{n:05d}", "image": images[n], "label": labels[n]} for n in (2, 10)]


def test_abdomenct1k_problems(tmp_path):
    write_nifti(tmp_path / "img" / "Case_00001_0000.nii.gz")
    write_nifti(tmp_path / "Mask" / "Case_00002.nii.gz")
    cases, problems = discover_cases("abdomenct1k", tmp_path)
    assert cases == []
    assert problems[0].startswith(f"image without label: {tmp_path / 'img' / 'Case_00001_0000.nii.gz'}")
    assert problems[1].startswith(f"label without image: {tmp_path / 'Mask' / 'Case_00002.nii.gz'}")


# ------------------------------------------------------------------------------------------------------------- MSD


def make_msd(root, names=("spleen_2", "spleen_10"), listed=None):
    listed = names if listed is None else listed
    for name in names:
        write_nifti(os.path.join(root, "imagesTr", f"{name}.nii.gz"))
        write_nifti(os.path.join(root, "labelsTr", f"{name}.nii.gz"))
    info = {
        "name": "Spleen",
        "labels": {"0": "background", "1": "spleen"},
        "modality": {"0": "CT"},
        "numTraining": len(listed),
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in listed],
    }
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump(info, f)


def test_msd_layout(tmp_path, reversed_listing):
    make_msd(tmp_path)
    (tmp_path / "imagesTr" / "._spleen_2.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble file
    scan = scan_dataset("msd", tmp_path)
    assert scan.problems == []
    assert scan.spec.labels_json() == {"0": "background", "1": "spleen"}
    assert scan.spec.modalities == ("CT",)
    assert scan.cases == [
        {"case_id": n, "image": str(tmp_path / "imagesTr" / f"{n}.nii.gz"),
         "label": str(tmp_path / "labelsTr" / f"{n}.nii.gz")}
        for n in ("spleen_2", "spleen_10")
    ]


def test_msd_cross_checks_folders(tmp_path):
    make_msd(tmp_path, names=("a_1", "a_2", "a_3"), listed=("a_1", "a_2", "a_9"))
    os.remove(tmp_path / "labelsTr" / "a_2.nii.gz")
    write_nifti(tmp_path / "labelsTr" / "orphan.nii.gz")
    cases, problems = discover_cases("msd", tmp_path)
    assert [c["case_id"] for c in cases] == ["a_1"]
    text = "\n".join(problems)
    assert f"label file does not exist: {tmp_path / 'labelsTr' / 'a_2.nii.gz'}" in text
    assert f"image file does not exist: {tmp_path / 'imagesTr' / 'a_9.nii.gz'}" in text
    assert f"{tmp_path / 'imagesTr' / 'a_3.nii.gz'}: in imagesTr but not listed" in text
    assert f"label without image: {tmp_path / 'labelsTr' / 'orphan.nii.gz'}" in text


def test_msd_without_dataset_json(tmp_path):
    write_nifti(tmp_path / "imagesTr" / "x.nii.gz")
    with pytest.raises(DatasetLayoutError, match=f"{tmp_path}: no MSD dataset.json"):
        discover_cases("msd", tmp_path)


# --------------------------------------------------------------------------------------------------- empty folders


@pytest.mark.parametrize("dataset, pattern", [("brats", "brats2023: <case>/<case>-{t2f"), ("lits", "volume-N"),
                                              ("abdomenct1k", "Case_XXXXX_0000")])
def test_empty_folder_names_root_and_layouts(tmp_path, dataset, pattern):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(DatasetLayoutError) as info:
        discover_cases(dataset, tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path}: no {dataset} cases found")
    assert pattern in message


def test_missing_root(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        discover_cases("lits", tmp_path / "nope")


def test_an_msd_task_module_refuses_another_tasks_folder(tmp_path):
    """msd_spleen scans the MSD layout with its own labels: the Liver task's folder is refused, naming its
    dataset.json, not read as spleens; the generic msd reads it with the labels it describes."""
    from bundle.testing.phantom_writers import make_phantoms

    make_phantoms("msd", tmp_path, cases=2, size=16)
    with pytest.raises(DatasetLayoutError, match=r"dataset\.json: labels .*liver.* are not those of dataset "
                                                  r"'msd_spleen'"):
        scan_dataset("msd_spleen", tmp_path)
    assert scan_dataset("msd", tmp_path).spec.regions == {"liver": (1,), "cancer": (2,)}
