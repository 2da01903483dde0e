"""SelectChannelsd: channels kept by name, meta data kept, bad names and channel counts refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.data.channel_select import SelectChannelsd, channel_indices

BRATS = ["FLAIR", "T1", "T1ce", "T2"]


def test_keeps_the_named_channels_in_the_given_order_with_their_meta_data():
    affine = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0]))
    image = MetaTensor(torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 3, 5).clone(), affine=affine)
    out = SelectChannelsd("image", BRATS, ["T2", "FLAIR"])({"image": image, "label": 7})
    assert out["image"].shape == (2, 2, 3, 5) and out["label"] == 7
    assert out["image"][:, 0, 0, 0].tolist() == [3.0, 0.0]
    assert torch.equal(out["image"].affine, affine)
    assert SelectChannelsd("image", BRATS, "FLAIR")({"image": image})["image"].shape == (1, 2, 3, 5)


@pytest.mark.parametrize("keep, words", [(["FLAIR", "ADC"], ["['ADC']", str(BRATS)]), ([], ["no channel"]),
                                         (["T1", "T1"], ["repeat"])])
def test_bad_names_are_refused_when_built(keep, words):
    with pytest.raises(ValueError) as failed:
        SelectChannelsd("image", BRATS, keep)
    assert all(w in str(failed.value) for w in words), failed.value


def test_an_image_with_another_channel_count_is_refused():
    with pytest.raises(ValueError, match=r"'image' has 1 channels, expected 4"):
        SelectChannelsd("image", BRATS, ["FLAIR"])({"image": np.zeros((1, 2, 2, 2))})


def test_channel_indices():
    assert channel_indices(BRATS, ["T1ce"]) == [2] and channel_indices("CT", "CT") == [0]
