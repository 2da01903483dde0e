"""Tests of bundle.data.tasks on phantom datalists: labels against the label files read back with nibabel."""

from __future__ import annotations

import copy
import dataclasses
import os

import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from phantom_datalists import make_phantom_datalist, ras_label_volume

from bundle.testing.phantom_writers import make_phantoms
from bundle.data.tasks import TASK_NAMES, ClassificationTask, get_task
from bundle.errors import InputError

# truth per slice from a RAS label volume [X, Y, Z]: [Z] (binary) or [Z, K] (multi-label)
SLICE_TRUTH = {
    "brats_wt": lambda v: np.isin(v, (1, 2, 4)).any(axis=(0, 1)).astype(np.int64),
    "brats_regions": lambda v: np.stack(
        [np.isin(v, g).any(axis=(0, 1)) for g in ((1, 2, 4), (1, 4), (4,))], axis=-1
    ).astype(np.float32),
    "lits_tumour": lambda v: (v == 2).any(axis=(0, 1)).astype(np.int64),
    "abdomenct_organs": lambda v: np.stack([(v == k).any(axis=(0, 1)) for k in (1, 2, 3, 4)], axis=-1).astype(
        np.float32
    ),
}
SLICE_CASES = [
    ("brats2019", "brats_wt"),
    ("brats2021", "brats_wt"),
    ("brats2019", "brats_regions"),
    ("brats2021", "brats_regions"),
    ("lits", "lits_tumour"),
    ("abdomenct1k", "abdomenct_organs"),
]
REGISTRY = [
    # name, dataset, level, class names, multi-label
    ("brats_wt", "brats", "slice", ("no_tumour", "tumour"), False),
    ("brats_regions", "brats", "slice", ("WT", "TC", "ET"), True),
    ("lits_tumour", "lits", "slice", ("no_tumour", "tumour"), False),
    ("lits_liver", "lits", "slice", ("no_liver", "liver"), False),
    ("abdomenct_organs", "abdomenct1k", "slice", ("liver", "kidney", "spleen", "pancreas"), True),
    ("brats_grade", "brats", "volume", ("LGG", "HGG"), False),
    ("lits_tumour_volume", "lits", "volume", ("no_tumour", "tumour"), False),
    ("msd_spleen_spleen", "msd_spleen", "slice", ("no_spleen", "spleen"), False),
]


def label_file(phantom, entry) -> str:
    return os.path.join(phantom.root, entry["label"])


@pytest.mark.parametrize("name, dataset, level, class_names, multi_label", REGISTRY)
def test_registry(name, dataset, level, class_names, multi_label):
    task = get_task(name)
    assert (task.name, task.dataset, task.level, task.class_names, task.multi_label) == (
        name, dataset, level, class_names, multi_label)
    assert task.num_outputs == len(class_names)
    assert get_task(task) is task and get_task(f" {name.upper()} ") is task


def test_registry_names_and_unknown_name():
    assert set(TASK_NAMES) == {row[0] for row in REGISTRY}
    with pytest.raises(ValueError, match="brats_wt"):
        get_task("brats_wtt")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"level": "pixel"},
        {"source": "folder"},
        {"class_names": ("a", "b", "c")},  # binary needs 2 names
        {"values": ()},
        {"values": ((1,), (2,))},  # binary takes one group
        {"source": "grade"},  # grade only at volume level with LGG / HGG
    ],
)
def test_invalid_task_definitions(kwargs):
    spec = {"name": "t", "dataset": "lits", "level": "slice", "class_names": ("no", "yes"), "values": ((2,),), **kwargs}
    with pytest.raises(ValueError):
        ClassificationTask(**spec)


@pytest.mark.parametrize("layout, name", SLICE_CASES)
def test_slice_labels_match_label_files(task_phantoms, layout, name):
    phantom, task = task_phantoms(layout), get_task(name)
    task.check_datalist(phantom.datalist, str(phantom.path))
    seen = []
    for entry in phantom.entries:
        truth = SLICE_TRUTH[name](ras_label_volume(label_file(phantom, entry)))
        labels = task.slice_labels(entry)
        assert labels.dtype == truth.dtype and labels.shape == truth.shape
        np.testing.assert_array_equal(labels, truth)
        seen.append(truth.reshape(len(truth), -1))
    seen = np.concatenate(seen)
    # the phantoms hold positive and negative slices of every class: the comparison above is not all zeros
    assert (seen == 1).any(axis=0).all() and (seen == 0).any(axis=0).all()


def test_lits_tumour_volume_matches_label_files(task_phantoms):
    phantom, task = task_phantoms("lits"), get_task("lits_tumour_volume")
    labels = [task.volume_label(e) for e in phantom.entries]
    truth = [int((ras_label_volume(label_file(phantom, e)) == 2).any()) for e in phantom.entries]
    assert labels == truth and set(truth) == {0, 1}  # phantom case 1 has no tumour
    assert all(type(v) is int for v in labels)
    with pytest.raises(ValueError, match="volume-level"):
        task.slice_labels(phantom.entries[0])


def test_multi_label_volume_vector():
    task = ClassificationTask("organs3d", "abdomenct1k", "volume", ("liver", "kidney", "spleen", "pancreas"), True,
                              ((1,), (2,), (3,), (4,)))
    label = task.volume_label({"case_id": "c", "volume_labels": [1, 3]})
    assert label.dtype == np.float32
    np.testing.assert_array_equal(label, [1, 0, 1, 0])
    with pytest.raises(ValueError, match="slice-level"):
        get_task("abdomenct_organs").volume_label({"case_id": "c", "volume_labels": [1]})


def test_grade_from_folders(task_phantoms):
    phantom, task = task_phantoms("brats2019"), get_task("brats_grade")
    task.check_datalist(phantom.datalist)
    for entry in phantom.entries:
        folder = entry["label"].split("/")[0]  # HGG/<case>/<case>_seg.nii.gz, written by the phantom writer
        assert entry["grade"] == folder
        assert task.volume_label(entry) == {"LGG": 0, "HGG": 1}[folder]
    assert [e["grade"] for e in phantom.entries] == ["HGG", "LGG", "HGG"]
    # MONAI's reader joins the root to "HGG" (a folder there); the grade still reads
    loaded = load_decathlon_datalist(str(phantom.path), base_dir=str(phantom.root))
    assert os.path.isabs(loaded[1]["grade"])
    assert [task.volume_label(e) for e in loaded] == [1, 0, 1]


def test_no_grade_outside_brats2019(task_phantoms):
    phantom, task = task_phantoms("brats2021"), get_task("brats_grade")
    assert all("grade" not in e for e in phantom.entries)
    with pytest.raises(InputError, match="BraTS2021_00001.*no 'grade'.*prepare_datalist"):
        task.volume_label(phantom.entries[0], str(phantom.path))
    with pytest.raises(InputError, match="layout is 'brats2020-2021'"):
        task.check_datalist(phantom.datalist, str(phantom.path))


def test_case_outside_grade_folder_has_no_grade(tmp_path):
    make_phantoms("brats2021", tmp_path / "data" / "extra", cases=1, size=16)  # mixed into a 2019 root
    phantom = make_phantom_datalist("brats2019", tmp_path)
    grades = {e["case_id"]: e.get("grade") for e in phantom.entries}
    assert phantom.datalist["layout"] == "brats2019"
    assert grades == {"BraTS19_PH_0001_1": "HGG", "BraTS19_PH_0002_1": "LGG", "BraTS19_PH_0003_1": "HGG",
                      "BraTS2021_00001": None}


def test_old_datalist_without_grade_serves_other_tasks(task_phantoms):
    entries = copy.deepcopy(task_phantoms("brats2019").entries)
    for entry in entries:
        del entry["grade"]
    assert [int(get_task("brats_wt").slice_labels(e).max()) for e in entries] == [1, 1, 1]
    with pytest.raises(InputError, match="BraTS19_PH_0001_1"):
        get_task("brats_grade").volume_label(entries[0])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda e: e["slice_labels"].pop("4"), r"no row for label value\(s\) \[4\].*stale.*prepare_datalist"),
        (lambda e: e["slice_labels"].__setitem__("2", e["slice_labels"]["2"][:-1]), "row 2 has 15 values for 16"),
        (lambda e: e.pop("slice_labels"), "no 'slice_labels'"),
    ],
)
def test_stale_datalist_names_case_and_gap(task_phantoms, damage, message):
    entry = copy.deepcopy(task_phantoms("brats2019").entries[0])
    damage(entry)
    with pytest.raises(InputError, match=message) as err:
        get_task("brats_regions").slice_labels(entry, "/data/datalist.json")
    assert str(err.value).startswith("/data/datalist.json: case BraTS19_PH_0001_1: ")


def test_stale_volume_labels():
    with pytest.raises(InputError, match="lits_007.*no 'volume_labels'"):
        get_task("lits_tumour_volume").volume_label({"case_id": "lits_007", "image": "volume-7.nii"})


def test_check_datalist_refuses_other_numbering_and_dataset(task_phantoms):
    brats2023 = {"dataset": "brats", "layout": "brats2023", "labels": {"0": "bg", "1": "a", "2": "b", "3": "c"}}
    with pytest.raises(InputError, match=r"value\(s\) \[4\].*\[0, 1, 2, 3\].*brats2023"):
        get_task("brats_wt").check_datalist(brats2023, "dl.json")
    with pytest.raises(InputError, match="for 'lits' datalists, this one is 'brats'"):
        get_task("lits_tumour").check_datalist(task_phantoms("brats2021").datalist)


def test_each_datasets_default_weak_task_and_organ_are_its_own():
    """WeakMedSAM's and SAM-Mix's defaults come from the dataset's spec: a slice task of that dataset, a region."""
    from bundle.data.labels import DATASETS
    from bundle.workflows.semisup.data import DEFAULT_ORGANS, organ_task
    from bundle.workflows.weak.pipeline import DEFAULT_TASKS

    assert dict(DEFAULT_TASKS) == {"brats": "brats_wt", "lits": "lits_liver", "abdomenct1k": "abdomenct_organs",
                                   "msd_spleen": "msd_spleen_spleen"}
    assert dict(DEFAULT_ORGANS) == {"lits": ("liver", (1, 2)), "abdomenct1k": ("liver", (1,)),
                                    "msd_spleen": ("spleen", (1,))}
    for name, spec in DATASETS.items():
        if spec.weak_task:
            task = get_task(spec.weak_task)
            assert task.dataset == name and task.level == "slice"
        if spec.organ:
            assert organ_task(name).values == (spec.regions[spec.organ],)
    with pytest.raises(ValueError, match="organ 'spleen' is none of its regions"):
        dataclasses.replace(DATASETS["lits"], organ="spleen")
