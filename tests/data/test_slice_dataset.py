"""Tests of bundle.data.slice_dataset: slice items, balanced weights, and slices of cached phantom volumes."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, load_decathlon_datalist
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, MapTransform, Orientationd, RandFlipd
from phantom_datalists import ras_label_volume

from bundle.data.slice_dataset import (
    CLASS_LABEL_KEY,
    AxialSliceDataset,
    class_balanced_weights,
    slice_items,
    volume_items,
)
from bundle.data.tasks import get_task

# ------------------------------------------------------------------------------------------------------ items


def test_slice_items_one_per_slice(task_phantoms):
    phantom = task_phantoms("brats2019")
    items = slice_items(phantom.entries, "brats_regions")
    expected = [(e["case_id"], d) for e in phantom.entries for d in range(e["num_slices"])]
    assert [(i["case_id"], i["slice_index"]) for i in items] == expected
    first = items[0]
    assert first["image"] == phantom.entries[0]["image"] and first["grade"] == "HGG"
    assert not {"slice_labels", "slice_foreground", "volume_labels", "checked"} & set(first)
    for item in items:
        truth_volume = ras_label_volume(os.path.join(phantom.root, item["label"]))[..., item["slice_index"]]
        truth = [np.isin(truth_volume, g).any() for g in ((1, 2, 4), (1, 4), (4,))]
        np.testing.assert_array_equal(item[CLASS_LABEL_KEY], np.asarray(truth, np.float32))
        assert item[CLASS_LABEL_KEY].dtype == np.float32


def test_slice_items_binary_labels_are_ints(task_phantoms):
    items = slice_items(task_phantoms("lits").entries, get_task("lits_tumour"), label_key="y")
    assert {type(i["y"]) for i in items} == {int} and {i["y"] for i in items} == {0, 1}


@pytest.mark.parametrize("fraction, expected", [(1.0, range(16)), (0.3, range(5, 10)), (0.5, range(4, 12)),
                                                (0.01, range(7, 8))])
def test_central_fraction(fraction, expected):
    entry = {"case_id": "c", "image": "c.nii", "num_slices": 16, "slice_labels": {"2": [0] * 16}}
    items = slice_items([entry], "lits_tumour", central_fraction=fraction)
    assert [i["slice_index"] for i in items] == list(expected)


def test_slice_items_argument_errors(task_phantoms):
    entries = task_phantoms("lits").entries
    with pytest.raises(ValueError, match="volume-level"):
        slice_items(entries, "lits_tumour_volume")
    with pytest.raises(ValueError, match="central_fraction"):
        slice_items(entries, "lits_tumour", central_fraction=0.0)
    with pytest.raises(ValueError, match="slice-level"):
        volume_items(entries, "lits_tumour")


def test_volume_items(task_phantoms):
    phantom = task_phantoms("brats2019")
    items = volume_items(phantom.entries, "brats_grade")
    assert [(i["case_id"], i[CLASS_LABEL_KEY]) for i in items] == [
        ("BraTS19_PH_0001_1", 1), ("BraTS19_PH_0002_1", 0), ("BraTS19_PH_0003_1", 1)]
    assert items[1]["label"] == phantom.entries[1]["label"] and "slice_labels" not in items[1]
    assert "slice_labels" in phantom.entries[1]  # entries are not modified


# ----------------------------------------------------------------------------------------------------- weights


def class_mass(weights: torch.Tensor, groups) -> dict:
    groups = np.asarray(groups)
    return {int(g): float(weights[torch.as_tensor(groups == g)].sum()) for g in np.unique(groups)}


def test_balanced_weights_binary(task_phantoms):
    items = slice_items(task_phantoms("lits").entries, "lits_tumour")
    labels = [i[CLASS_LABEL_KEY] for i in items]
    assert labels.count(0) > 2 * labels.count(1) > 0  # mostly negative slices
    weights = class_balanced_weights(items, "lits_tumour")
    assert weights.dtype == torch.float64 and weights.shape == (len(items),)
    assert class_mass(weights, labels) == pytest.approx({0: 0.5, 1: 0.5})
    drawn = list(torch.utils.data.WeightedRandomSampler(weights, 20000, generator=torch.Generator().manual_seed(0)))
    assert np.mean([labels[i] for i in drawn]) == pytest.approx(0.5, abs=0.02)


def test_balanced_weights_multi_label_rarest_class():
    # counts: WT 5, TC 3, ET 2 -> groups: none 0, WT-only 1, TC (no ET) 2, ET 3
    vectors = [[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]]
    items = [{CLASS_LABEL_KEY: np.asarray(v, np.float32)} for v in vectors]
    weights = class_balanced_weights(items, "brats_regions")
    expected = [1 / 8, 1 / 8, 1 / 8, 1 / 8, 1 / 4, 1 / 8, 1 / 8]
    np.testing.assert_allclose(weights.numpy(), expected)


def test_balanced_weights_multi_label_ties_go_to_lower_class():
    items = [{CLASS_LABEL_KEY: np.asarray(v, np.float32)} for v in ([1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0])]
    np.testing.assert_allclose(class_balanced_weights(items, "abdomenct_organs").numpy(), [0.25, 0.5, 0.25])


def test_balanced_weights_phantom_regions(task_phantoms):
    items = slice_items(task_phantoms("brats2019").entries, "brats_regions")
    weights = class_balanced_weights(items, "brats_regions")
    # the group of an item, written out independently: ET before TC before WT before none
    groups = [3 if v[2] else 2 if v[1] else 1 if v[0] else 0 for v in (i[CLASS_LABEL_KEY] for i in items)]
    assert set(groups) == {0, 1, 2, 3}
    assert class_mass(weights, groups) == pytest.approx({g: 0.25 for g in range(4)})


def test_balanced_weights_errors():
    with pytest.raises(ValueError, match="no items"):
        class_balanced_weights([], "lits_tumour")
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        class_balanced_weights([{CLASS_LABEL_KEY: 2}], "lits_tumour")
    with pytest.raises(ValueError, match="length 3"):
        class_balanced_weights([{CLASS_LABEL_KEY: np.zeros(4, np.float32)}], "brats_regions")


# ----------------------------------------------------------------------------------------------- slice dataset


def coded_volume(case: int, channels: int = 2, depth: int = 5) -> torch.Tensor:
    """``[C, 4, 3, D]`` whose value tells case, channel and slice: ``1000 * case + 10 * d + c``."""
    c = torch.arange(channels)[:, None, None, None]
    d = torch.arange(depth)[None, None, None, :]
    return (1000 * case + 10 * d + c).float().expand(channels, 4, 3, depth).contiguous()


def coded_items(cases, depth=5):
    return [{"case_id": f"c{k}", "slice_index": d, "num_slices": depth, CLASS_LABEL_KEY: d % 2} for k in cases
            for d in range(depth)]


def test_slices_of_the_right_case():
    volumes = [{"image": coded_volume(k), "prior": coded_volume(k, 3).numpy() + 0.5} for k in (2, 0, 1)]
    data = AxialSliceDataset(volumes, coded_items([0, 1, 2]), keys=("image", "prior"), case_ids=["c2", "c0", "c1"])
    assert len(data) == 15
    for index, item in enumerate(coded_items([0, 1, 2])):
        out = data[index]
        case, d = int(item["case_id"][1:]), item["slice_index"]
        assert (out["case_id"], out["slice_index"]) == (item["case_id"], d)
        torch.testing.assert_close(out["image"], coded_volume(case)[..., d])
        torch.testing.assert_close(out["prior"], coded_volume(case, 3)[..., d] + 0.5)
        assert out["image"].shape == (2, 4, 3) and out["prior"].shape == (3, 4, 3)
        assert out[CLASS_LABEL_KEY].dtype == torch.int64 and int(out[CLASS_LABEL_KEY]) == d % 2
        # its own storage: one slice, not a view into the cached volume
        assert out["image"].untyped_storage().nbytes() == 2 * 4 * 3 * 4 and out["image"].is_contiguous()
    out["image"].fill_(-1)
    assert volumes[2]["image"].min() >= 0


class CountLoads(MapTransform):
    """Deterministic pass-through that counts the volumes it sees (so CacheDataset caches after it)."""

    def __init__(self, keys):
        super().__init__(keys)
        self.calls = 0

    def __call__(self, data):
        self.calls += 1
        return dict(data)


def test_cached_phantom_volumes_loaded_once(task_phantoms):
    phantom = task_phantoms("brats2021")
    # MONAI joins the data root to every existing path, case_id included (<root>/<case_id>/ is a folder)
    entries = load_decathlon_datalist(str(phantom.path), base_dir=str(phantom.root))
    assert os.path.isabs(entries[0]["case_id"])
    counter = CountLoads(keys=["image"])
    load = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"]),
                    Orientationd(["image", "label"], axcodes="RAS", labels=None), counter])
    volumes = CacheDataset(entries[::-1], load, num_workers=0, progress=False)
    items = slice_items(entries, "brats_wt")
    data = AxialSliceDataset(volumes, items, keys=("image", "label"))
    assert counter.calls == len(entries)
    flair = {e["case_id"]: nib.as_closest_canonical(nib.load(os.path.join(phantom.root, e["image"][0]))).get_fdata()
             for e in phantom.entries}
    for _ in range(2):
        for index, item in enumerate(items):
            out = data[index]
            assert out["image"].shape == (4, 24, 24) and out["label"].shape == (1, 24, 24)
            # the label slice of this case and index holds tumour exactly when the slice label says so
            assert bool(np.isin(out["label"].numpy(), (1, 2, 4)).any()) == bool(out[CLASS_LABEL_KEY])
            np.testing.assert_array_equal(out["image"][0].numpy(), flair[out["case_id"]][..., item["slice_index"]])
    assert counter.calls == len(entries)
    assert {int(data[i][CLASS_LABEL_KEY]) for i in range(len(data))} == {0, 1}


def test_transform_and_collation():
    volumes = [{"image": coded_volume(k)} for k in (0, 1)]
    flip = RandFlipd(keys="image", prob=1.0, spatial_axis=0)
    items = [{**i, CLASS_LABEL_KEY: np.asarray([1, 0, i["slice_index"] % 2], np.float32)} for i in coded_items([0, 1])]
    data = AxialSliceDataset(volumes, items, transform=flip, case_ids=["c0", "c1"])
    torch.testing.assert_close(torch.as_tensor(data[3]["image"]), coded_volume(0)[..., 3].flip(1))
    batch = next(iter(DataLoader(data, batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 2, 4, 3) and batch[CLASS_LABEL_KEY].dtype == torch.float32
    assert batch[CLASS_LABEL_KEY].shape == (4, 3) and list(batch["case_id"]) == ["c0"] * 4
    assert batch["slice_index"].tolist() == [0, 1, 2, 3]


def test_slice_dataset_errors():
    volumes = [{"image": coded_volume(0)}]
    with pytest.raises(ValueError, match="cannot tell the case"):
        AxialSliceDataset(volumes, coded_items([0]))
    with pytest.raises(ValueError, match=r"no volume for 1 case\(s\).*c1"):
        AxialSliceDataset(volumes, coded_items([0, 1]), case_ids=["c0"])
    with pytest.raises(ValueError, match="names volumes 0 and 1"):
        AxialSliceDataset(volumes * 2, coded_items([0]), case_ids=["c0", "c0"])
    with pytest.raises(ValueError, match="1 case ids for 2 volumes"):
        AxialSliceDataset(volumes * 2, coded_items([0]), case_ids=["c0"])
    with pytest.raises(KeyError, match="no 'prior'"):
        AxialSliceDataset(volumes, coded_items([0]), keys="prior", case_ids=["c0"])[0]
    with pytest.raises(ValueError, match="has 5 slices along its last axis, the datalist says 6"):
        AxialSliceDataset(volumes, coded_items([0], depth=6), case_ids=["c0"])[0]
    with pytest.raises(ValueError, match="expected channel-first"):
        AxialSliceDataset([{"image": coded_volume(0)[0]}], coded_items([0]), case_ids=["c0"])[0]
