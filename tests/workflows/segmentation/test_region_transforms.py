import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.data.labels import DATASETS
from bundle.workflows.segmentation.transforms import (
    LabelToRegions,
    LabelToRegionsd,
    RegionsToLabel,
    RegionsToLabeld,
    check_regions,
    region_membership,
)

BRATS = {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
LITS = {"liver": [1, 2], "tumour": [2]}
ABDOMEN = {"liver": [1], "kidney": [2], "spleen": [3], "pancreas": [4]}

# (regions, label values present) for a round trip label -> regions -> label
ROUND_TRIP = [(BRATS, [0, 1, 2, 4]), (LITS, [0, 1, 2]), (ABDOMEN, [0, 1, 2, 3, 4])]


def test_regions_match_dataset_specs():
    for regions, name in ((BRATS, "brats"), (LITS, "lits"), (ABDOMEN, "abdomenct1k")):
        assert {k: tuple(v) for k, v in regions.items()} == dict(DATASETS[name].regions)


def test_label_to_regions_brats():
    label = MetaTensor(torch.tensor([0, 1, 2, 4, 3], dtype=torch.float32).reshape(1, 5, 1, 1), affine=torch.eye(4) * 2)
    out = LabelToRegions(BRATS)(label)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32 and out.shape == (3, 5, 1, 1)
    torch.testing.assert_close(out.affine, label.affine)
    expected = [[0, 1, 1, 1, 0], [0, 1, 0, 1, 0], [0, 0, 0, 1, 0]]  # value 3 belongs to no BraTS 2021 region
    assert out[..., 0, 0].tolist() == expected


@pytest.mark.parametrize("regions, values", ROUND_TRIP)
def test_round_trip(regions, values):
    label = torch.tensor(values * 3, dtype=torch.float32).reshape(1, 3, len(values), 1)
    binary = LabelToRegions(regions)(label)
    back = RegionsToLabel(regions)(binary)
    assert back.shape == label.shape
    assert back.dtype == torch.uint8
    assert back.float().tolist() == label.tolist()


def test_regions_to_label_most_likely_label():
    # BraTS: ET confident but TC unsure -> 4; TC unlikely and ET unsure -> 2 (oedema)
    probs = torch.tensor([[0.9, 0.9], [0.4, 0.1], [0.95, 0.6]]).reshape(3, 2, 1, 1)
    assert RegionsToLabel(BRATS)(probs)[0, :, 0, 0].tolist() == [4, 2]
    # LiTS: a probable tumour outside an unsure liver is tumour; an unsure one stays background
    probs = torch.tensor([[0.4, 0.4], [0.9, 0.3]]).reshape(2, 2, 1, 1)
    assert RegionsToLabel(LITS)(probs)[0, :, 0, 0].tolist() == [2, 0]


def test_dictionary_wrappers_and_numpy():
    data = {"label": np.array([[[[0], [2]]]], dtype=np.int16), "pred": np.zeros((2, 1, 2, 1), np.float32)}
    out = LabelToRegionsd("label", LITS)(data)
    assert isinstance(out["label"], np.ndarray) and out["label"][:, 0, :, 0].tolist() == [[0, 1], [0, 1]]
    out = RegionsToLabeld("pred", LITS)(out)
    assert isinstance(out["pred"], np.ndarray) and out["pred"].shape == (1, 1, 2, 1)
    assert LabelToRegionsd("missing", LITS, allow_missing_keys=True)({"x": 1}) == {"x": 1}


@pytest.mark.parametrize(
    "regions, match",
    [({}, "regions must map"), ({"a": []}, "lists no label"), ({"a": [0, 1]}, "background"), ([1, 2], "regions must")],
)
def test_invalid_regions(regions, match):
    with pytest.raises(ValueError, match=match):
        check_regions(regions)


def test_shape_errors():
    with pytest.raises(ValueError, match="one channel"):
        LabelToRegions(LITS)(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="expected 2 region channels"):
        RegionsToLabel(LITS)(torch.zeros(3, 4, 4))


def test_membership_table():
    values, table = region_membership(BRATS)
    assert values == [0, 1, 2, 4]
    assert table.tolist() == [[0, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]]
