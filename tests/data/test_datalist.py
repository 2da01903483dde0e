"""Tests of bundle.data.datalist and bundle.data.datalist_cli on tiny synthetic dataset folders."""

from __future__ import annotations

import json
import os
import runpy
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from bundle.data.datalist import build_datalist, split_cases, split_sizes, write_datalist
from bundle.data.datalist_cli import main
from bundle.data.layouts import DatasetLayoutError
from bundle.hashing import file_sha256

SHAPE = (8, 8, 6)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_nifti(path, data, affine=None):
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def label_volume(slices: dict[int, list[int]]) -> np.ndarray:
    """``{value: [slice indices along the file's third axis]}`` -> an ``8 x 8 x 6`` uint8 label volume."""
    data = np.zeros(SHAPE, np.uint8)
    for value, indices in slices.items():
        for k in indices:
            data[1 + value : 3 + value, 2:4, k] = value  # values sit at different (x, y) so they can share a slice
    return data


def make_lits(root, numbers, slices=None, affine=None):
    slices = slices or {1: [1, 2, 3], 2: [2]}
    for n in numbers:
        write_nifti(os.path.join(root, f"batch{n % 2}", f"volume-{n}.nii"), np.zeros(SHAPE, np.int16), affine)
        write_nifti(os.path.join(root, f"seg{n % 3}", f"segmentation-{n}.nii"), label_volume(slices), affine)


def make_brats2019(root, case_ids, slices=None, skip=()):
    slices = slices or {1: [1], 2: [1, 2], 4: [3]}
    for cid in case_ids:
        folder = os.path.join(root, "HGG", cid)
        for m in ("flair", "t1", "t1ce", "t2"):
            if (cid, m) not in skip:
                write_nifti(os.path.join(folder, f"{cid}_{m}.nii.gz"), np.ones(SHAPE, np.float32))
        if (cid, "seg") not in skip:
            write_nifti(os.path.join(folder, f"{cid}_seg.nii.gz"), label_volume(slices))


def entries(datalist):
    return [e for k in ("training", "validation", "testing") for e in datalist[k]]


# ---------------------------------------------------------------------------------------------------- entries


def test_brats_entry_contract(tmp_path):
    make_brats2019(tmp_path, ["BraTS19_2013_2_1", "BraTS19_2013_3_1"])
    datalist = build_datalist("brats", tmp_path, 0.0, 0.0, progress=False)
    top = {"training", "validation", "testing", "dataset", "labels", "modalities", "seed", "fractions"}
    assert top <= set(datalist)
    assert datalist["dataset"] == "brats"
    assert list(datalist["labels"]) == ["0", "1", "2", "4"] and datalist["labels"]["0"] == "background"
    assert datalist["modalities"] == ["flair", "t1", "t1ce", "t2"]
    assert datalist["fractions"] == {"validation": 0.0, "testing": 0.0}
    entry = dict(datalist["training"][0])
    cid = "BraTS19_2013_2_1"
    record = entry.pop("checked")  # what the case check verified, per file (tests/data/test_case_check.py)
    assert record["label_values"] == [0, 1, 2, 4] and record["image_channels"] == 4
    files = [f"HGG/{cid}/{cid}_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2", "seg")]
    assert list(record["files"]) == files
    assert record["files"][files[-1]]["verified"] == ["header", "grid", "label_values"]
    assert record["files"][files[0]]["size"] == os.path.getsize(tmp_path / files[0])
    # the label file the summaries below were computed from: size, modification time, sha256
    source = entry.pop("summarised")
    label = tmp_path / files[-1]
    assert source == {"version": 1, "size": label.stat().st_size, "mtime_ns": label.stat().st_mtime_ns,
                      "sha256": file_sha256(label)}
    assert entry == {
        "case_id": cid,
        "image": [f"HGG/{cid}/{cid}_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")],
        "label": f"HGG/{cid}/{cid}_seg.nii.gz",
        "grade": "HGG",  # the BraTS 2019 grade folder
        "volume_labels": [1, 2, 4],
        "num_slices": 6,
        "slice_labels": {"1": [0, 1, 0, 0, 0, 0], "2": [0, 1, 1, 0, 0, 0], "4": [0, 0, 0, 1, 0, 0]},
        "slice_foreground": [0, 1, 1, 1, 0, 0],
    }
    # relative paths resolve through MONAI against the root
    loaded = load_decathlon_datalist(write_datalist(datalist, tmp_path / "dl.json"), base_dir=str(tmp_path))
    assert all(os.path.isfile(p) for item in loaded for p in item["image"] + [item["label"]])


def test_brats2023_slice_labels_use_et3(tmp_path):
    folder = tmp_path / "BraTS-GLI-00001-000"
    for token in ("t2f", "t1n", "t1c", "t2w"):
        write_nifti(folder / f"BraTS-GLI-00001-000-{token}.nii.gz", np.ones(SHAPE, np.float32))
    write_nifti(folder / "BraTS-GLI-00001-000-seg.nii.gz", label_volume({3: [4], 2: [0]}))
    datalist = build_datalist("brats", tmp_path, 0.0, 0.0, progress=False)
    entry = datalist["training"][0]
    assert datalist["layout"] == "brats2023"
    assert sorted(datalist["labels"]) == ["0", "1", "2", "3"]
    assert [os.path.basename(p) for p in entry["image"]] == [
        f"BraTS-GLI-00001-000-{t}.nii.gz" for t in ("t2f", "t1n", "t1c", "t2w")
    ]
    assert entry["volume_labels"] == [2, 3]
    assert entry["slice_labels"] == {"1": [0] * 6, "2": [1, 0, 0, 0, 0, 0], "3": [0, 0, 0, 0, 1, 0]}


@pytest.mark.parametrize(
    "affine, reversed_slices",
    [
        (np.eye(4), False),
        (np.diag([-1.0, -1.0, 1.0, 1.0]), False),  # LPS-style: x and y flip, axial order unchanged
        (np.diag([1.0, 1.0, -1.0, 1.0]), True),  # z runs superior -> inferior: RAS reverses the slice order
        (np.diag([-0.8, -0.8, -2.5, 1.0]), True),
    ],
)
def test_slice_labels_after_ras_orientation(tmp_path, affine, reversed_slices):
    make_lits(tmp_path, [3], slices={1: [0, 1], 2: [1, 4]}, affine=affine)
    entry = build_datalist("lits", tmp_path, 0.0, 0.0, progress=False)["training"][0]
    expected = {"1": [1, 1, 0, 0, 0, 0], "2": [0, 1, 0, 0, 1, 0]}
    foreground = [1, 1, 0, 0, 1, 0]
    if reversed_slices:
        expected = {k: v[::-1] for k, v in expected.items()}
        foreground = foreground[::-1]
    assert entry["slice_labels"] == expected
    assert entry["slice_foreground"] == foreground
    assert entry["volume_labels"] == [1, 2]
    assert entry["num_slices"] == 6


def test_ct_entries_are_strings_and_absolute_option(tmp_path):
    make_lits(tmp_path, [2, 10])
    relative = build_datalist("lits", tmp_path, 0.0, 0.0, progress=False)
    absolute = build_datalist("lits", tmp_path, 0.0, 0.0, relative=False, progress=False)
    assert relative["modalities"] == ["CT"]
    assert relative["labels"] == {"0": "background", "1": "liver", "2": "tumour"}
    assert [e["image"] for e in relative["training"]] == ["batch0/volume-2.nii", "batch0/volume-10.nii"]
    assert [e["label"] for e in relative["training"]] == ["seg2/segmentation-2.nii", "seg1/segmentation-10.nii"]
    assert [e["image"] for e in absolute["training"]] == [str(tmp_path / e["image"]) for e in relative["training"]]


def test_abdomenct1k_and_msd_datalists(tmp_path):
    act = tmp_path / "act"
    for n in (1, 2):
        write_nifti(act / "img" / f"Case_{n:05d}_0000.nii.gz", np.zeros(SHAPE, np.int16))
        write_nifti(act / "Mask" / f"Case_{n:05d}.nii.gz", label_volume({1: [0], 4: [5]}))
    entry = build_datalist("abdomenct1k", act, 0.0, 0.0, progress=False)["training"][0]
    assert entry["image"] == "img/Case_00001_0000.nii.gz" and entry["label"] == "Mask/Case_00001.nii.gz"
    assert sorted(entry["slice_labels"]) == ["1", "2", "3", "4"]
    assert entry["volume_labels"] == [1, 4]

    msd = tmp_path / "Task09_Spleen"
    write_nifti(msd / "imagesTr" / "spleen_1.nii.gz", np.zeros(SHAPE, np.int16))
    write_nifti(msd / "labelsTr" / "spleen_1.nii.gz", label_volume({1: [2]}))
    (msd / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "spleen"}, "modality": {"0": "CT"},
        "training": [{"image": "./imagesTr/spleen_1.nii.gz", "label": "./labelsTr/spleen_1.nii.gz"}],
    }))
    datalist = build_datalist("msd", msd, 0.0, 0.0, progress=False)
    assert datalist["labels"] == {"0": "background", "1": "spleen"}
    assert datalist["training"][0]["image"] == "imagesTr/spleen_1.nii.gz"
    assert datalist["training"][0]["slice_labels"] == {"1": [0, 0, 1, 0, 0, 0]}


# ------------------------------------------------------------------------------------------------------ splits


@pytest.mark.parametrize(
    "n, val, test, sizes",
    [(4, 0.25, 0.25, (2, 1, 1)), (1, 0.2, 0.2, (1, 0, 0)), (2, 0.2, 0.2, (2, 0, 0)), (3, 0.2, 0.2, (1, 1, 1)),
     (10, 0.2, 0.2, (6, 2, 2)), (2, 0.5, 0.4, (1, 1, 0)), (5, 0.1, 0.1, (3, 1, 1)), (335, 0.1, 0.1, (267, 34, 34))],
)
def test_split_sizes(n, val, test, sizes):
    assert split_sizes(n, val, test) == sizes


@pytest.mark.parametrize("val, test", [(-0.1, 0.2), (1.0, 0.0), (0.5, 0.5)])
def test_split_sizes_rejects_bad_fractions(val, test):
    with pytest.raises(ValueError, match="fraction"):
        split_sizes(10, val, test)


def test_split_cases_deterministic_disjoint_covering():
    ids = [f"case_{i}" for i in range(20)]
    first = split_cases(ids, 0.2, 0.2, seed=3)
    assert split_cases(list(reversed(ids)), 0.2, 0.2, seed=3) == first  # input order does not matter
    assert split_cases(ids, 0.2, 0.2, seed=4) != first
    parts = [set(first[k]) for k in ("training", "validation", "testing")]
    assert [len(p) for p in parts] == [12, 4, 4]
    assert set.union(*parts) == set(ids) and sum(map(len, parts)) == len(ids)


def test_datalist_splits_by_case(tmp_path):
    make_lits(tmp_path, range(1, 11))
    a = build_datalist("lits", tmp_path, 0.2, 0.3, seed=1, progress=False)
    b = build_datalist("lits", tmp_path, 0.2, 0.3, seed=1, progress=False)
    c = build_datalist("lits", tmp_path, 0.2, 0.3, seed=2, progress=False)
    assert a == b
    assert [e["case_id"] for e in a["validation"]] != [e["case_id"] for e in c["validation"]]
    ids = [[e["case_id"] for e in a[k]] for k in ("training", "validation", "testing")]
    assert [len(x) for x in ids] == [5, 2, 3]
    assert sorted(sum(ids, [])) == sorted(f"lits_{n:03d}" for n in range(1, 11))
    assert a["seed"] == 1 and a["fractions"] == {"validation": 0.2, "testing": 0.3}


# ------------------------------------------------------------------------------------------- incomplete cases


def test_all_problems_in_one_error(tmp_path):
    make_brats2019(tmp_path, ["c_1", "c_2", "c_3"], skip={("c_2", "t1ce"), ("c_3", "seg")})
    with pytest.raises(DatasetLayoutError) as info:
        build_datalist("brats", tmp_path, progress=False)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "2 problem(s)" in message
    assert "c_2" in message and "missing modality t1ce" in message
    assert "image without label: case c_3" in message
    assert "skip_incomplete" in message


def test_skip_incomplete_warns_once(tmp_path):
    make_brats2019(tmp_path, ["c_1", "c_2", "c_3", "c_4"], skip={("c_2", "t1ce"), ("c_3", "seg")})
    bad = label_volume({1: [0]})
    bad[0, 0, 0] = 7
    write_nifti(tmp_path / "HGG" / "c_4" / "c_4_seg.nii.gz", bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        datalist = build_datalist("brats", tmp_path, 0.0, 0.0, skip_incomplete=True, progress=False)
    ours = [w for w in caught if "leaving those cases out" in str(w.message)]
    assert len(ours) == 1
    text = str(ours[0].message)
    assert "missing modality t1ce" in text and "c_3" in text
    assert "c_4_seg.nii.gz: label values [7] are not in the label set [0, 1, 2, 4]" in text
    assert [e["case_id"] for e in entries(datalist)] == ["c_1"]


def test_bad_label_values_raise_naming_file(tmp_path):
    make_lits(tmp_path, [1])
    write_nifti(tmp_path / "seg1" / "segmentation-1.nii", label_volume({1: [0], 2: [1]}) * 2)
    with pytest.raises(DatasetLayoutError, match=r"segmentation-1.nii: label values \[4\] are not in the label set"):
        build_datalist("lits", tmp_path, progress=False)


def test_no_complete_case_left(tmp_path):
    make_brats2019(tmp_path, ["c_1"], skip={("c_1", "seg")})
    with pytest.warns(UserWarning), pytest.raises(DatasetLayoutError, match="no complete brats case"):
        build_datalist("brats", tmp_path, skip_incomplete=True, progress=False)


# ------------------------------------------------------------------------------------------------ writing, CLI


def test_write_datalist_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "lists" / "datalist.json"
    write_datalist({"training": [{"slice_labels": {"1": [0, 1]}}]}, out)
    assert json.loads(out.read_text()) == {"training": [{"slice_labels": {"1": [0, 1]}}]}

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_datalist({"training": []}, out)
    assert json.loads(out.read_text())["training"][0]["slice_labels"] == {"1": [0, 1]}  # old file intact
    assert os.listdir(out.parent) == ["datalist.json"]  # temporary file cleaned up


def test_cli_writes_datalist_monai_reads(tmp_path, capsys):
    make_lits(tmp_path / "lits", [2, 10, 11, 12])
    out = tmp_path / "out" / "datalist.json"
    code = main(["--dataset", "lits", "--root", str(tmp_path / "lits"), "--out", str(out), "--val-fraction", "0.25",
                 "--test-fraction", "0.25", "--seed", "5", "--no-progress"])
    assert code == 0
    assert "2 training, 1 validation, 1 testing" in capsys.readouterr().out
    datalist = json.loads(out.read_text())
    assert datalist["seed"] == 5
    for split in ("training", "validation", "testing"):
        items = load_decathlon_datalist(str(out), data_list_key=split, base_dir=str(tmp_path / "lits"))
        assert len(items) == len(datalist[split])
        for item in items:
            assert os.path.isfile(item["image"]) and os.path.isfile(item["label"])
            assert len(item["slice_foreground"]) == item["num_slices"] == 6


def test_cli_absolute_and_skip(tmp_path):
    make_lits(tmp_path, [1, 2])
    os.remove(tmp_path / "seg2" / "segmentation-2.nii")
    out = tmp_path / "dl.json"
    with pytest.warns(UserWarning, match="volume-2.nii"):
        main(["--dataset", "lits", "--root", str(tmp_path), "--out", str(out), "--skip-incomplete", "--absolute",
              "--no-progress"])
    datalist = json.loads(out.read_text())
    assert [e["image"] for e in entries(datalist)] == [str(tmp_path / "batch1" / "volume-1.nii")]


def test_cli_errors_exit_2_without_traceback(tmp_path, capsys):
    make_lits(tmp_path, [1, 2])
    os.remove(tmp_path / "seg2" / "segmentation-2.nii")
    with pytest.raises(SystemExit) as info:
        main(["--dataset", "lits", "--root", str(tmp_path), "--out", str(tmp_path / "dl.json"), "--no-progress"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "image without label" in err and "volume-2.nii" in err and "Traceback" not in err
    assert not (tmp_path / "dl.json").exists()

    with pytest.raises(SystemExit) as info:
        main(["--dataset", "lits", "--root", str(tmp_path / "missing"), "--out", str(tmp_path / "dl.json")])
    assert info.value.code == 2 and "does not exist" in capsys.readouterr().err

    with pytest.raises(SystemExit) as info:
        main(["--dataset", "lits", "--root", str(tmp_path), "--out", "x.json", "--val-fraction", "0.7",
              "--test-fraction", "0.3"])
    assert info.value.code == 2 and "below 1" in capsys.readouterr().err


def test_prepare_datalist_script(tmp_path, monkeypatch):
    make_lits(tmp_path, [1])
    out = tmp_path / "dl.json"
    argv = ["prepare_datalist.py", "--dataset", "lits", "--root", str(tmp_path), "--out", str(out), "--no-progress"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as info:
        runpy.run_path(os.path.join(REPO, "scripts", "prepare_datalist.py"), run_name="__main__")
    assert info.value.code == 0
    assert json.loads(out.read_text())["training"][0]["case_id"] == "lits_001"
