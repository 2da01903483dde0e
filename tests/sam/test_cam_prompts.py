"""Box prompts from CAMs and masks, the central fallback box, and the dense guidance on the embedding grid."""

import pytest
import torch

from bundle.sam.cam_prompts import cam_boxes, central_boxes, embedding_guidance, mask_boxes


def test_mask_boxes_are_tight_on_pixel_edges_and_empty_masks_get_the_central_box():
    masks = torch.zeros(2, 1, 20, 40)
    masks[0, 0, 3:8, 10:31] = 1  # rows 3..7, columns 10..30
    boxes, empty = mask_boxes(masks)
    assert boxes[0].tolist() == [10.0, 3.0, 31.0, 8.0]
    assert empty.tolist() == [False, True]
    assert boxes[1].tolist() == [10.0, 5.0, 30.0, 15.0]  # [W/4, H/4, 3W/4, 3H/4]
    assert torch.equal(central_boxes(1, 20, 40)[0], boxes[1])


def test_cam_boxes_threshold_at_0_4_by_default():
    cam = torch.zeros(1, 1, 16, 16)
    cam[0, 0, 2:4, 2:4] = 1.0
    cam[0, 0, 10, 12] = 0.39  # below the threshold: not in the box
    cam[0, 0, 12, 5] = 0.4  # at the threshold: in the box
    boxes, masks, empty = cam_boxes(cam)
    assert boxes[0].tolist() == [2.0, 2.0, 6.0, 13.0]
    assert masks.sum() == 5 and not empty[0]
    boxes, _, _ = cam_boxes(cam, threshold=0.5)
    assert boxes[0].tolist() == [2.0, 2.0, 4.0, 4.0]


def test_flat_cam_is_empty_and_falls_back():
    boxes, masks, empty = cam_boxes(torch.zeros(3, 1, 8, 12))
    assert empty.all() and masks.sum() == 0
    assert boxes.tolist() == [[3.0, 2.0, 9.0, 6.0]] * 3


def test_bad_shapes_and_thresholds_are_refused():
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        cam_boxes(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="threshold"):
        cam_boxes(torch.zeros(1, 1, 8, 8), threshold=0.0)
    with pytest.raises(ValueError, match="one mask per slice"):
        mask_boxes(torch.zeros(1, 2, 8, 8))


def test_embedding_guidance_is_the_covered_fraction_of_each_cell():
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, :4, :2] = 1
    grid = embedding_guidance(mask, (2, 2))
    assert grid.shape == (1, 1, 2, 2)
    assert grid[0, 0].tolist() == [[0.5, 0.0], [0.0, 0.0]]
