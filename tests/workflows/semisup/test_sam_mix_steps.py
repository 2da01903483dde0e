"""SAM-Mix's training step and card options: the box prompt of the labelled slices (``train_prompts``), old cards
(``gt_boxes``) read as new ones, and the classifier's output stride recorded and refused in one line."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.engines import IterationEvents
from monai.losses import DiceLoss

from bundle.data.slice_dataset import CLASS_LABEL_KEY
from bundle.networks.sam_mix import SamMixNet
from bundle.sam.cam_prompts import mask_boxes
from bundle.sam.loading import load_sam
from bundle.sam.trainable import TrainableSam
from bundle.workflows.common.card_schema import validate_card
from bundle.workflows.semisup.training import (
    TRAIN_PROMPTS,
    JointStep,
    LabelledBatches,
    train_prompts_option,
    training_card,
    upgrade_card,
)

CARDS = Path(__file__).resolve().parents[1] / "common" / "cards"
SIZE = 32


def _net(checkpoint, output_stride=8) -> SamMixNet:
    torch.manual_seed(0)
    sam = TrainableSam(load_sam("tiny", checkpoint), lora_rank=2)
    return SamMixNet(sam, "resnet18", 1, {}, 0.4, True, output_stride)


def _labelled() -> list[dict]:
    """Two slices whose organ (a square) is far from where an untrained classifier's CAM box lands."""
    items, generator = [], torch.Generator().manual_seed(0)
    for offset in (2, 5):
        image = torch.rand(1, SIZE, SIZE, generator=generator) * 0.2
        label = torch.zeros(1, SIZE, SIZE)
        label[:, offset : offset + 8, offset + 3 : offset + 12] = 1.0
        items.append({"image": image + label * 0.7, "label": label})
    return items


def _step(net: SamMixNet, train_prompts: str, batch: dict) -> dict:
    labelled = LabelledBatches(_labelled(), batch_size=2, seed=0)
    labelled.start_epoch(1)
    engine = Engine(lambda e, b: None)
    engine.register_events(*IterationEvents)
    engine.network = net
    engine.optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    engine.state.device = torch.device("cpu")
    return JointStep(labelled, 0.5, train_prompts)(engine, batch)


def _expected(net: SamMixNet, batch: dict) -> dict[str, float]:
    """The step's Dice term computed by hand for each box source: the classifier's train-mode forward first (it
    moves the batch-norm statistics the CAM then uses), then the CAM of the labelled slices."""
    net = copy.deepcopy(net).train()
    with torch.no_grad():
        net(batch["image"])
    data = _labelled()
    xl = torch.stack([d["image"] for d in data])
    ml = torch.stack([d["label"] for d in data])
    _, cam_box, cam_mask, _ = net.prompts(xl)
    boxes = {"cam": cam_box, "gt": mask_boxes(ml > 0.5)[0]}
    dice = DiceLoss(sigmoid=True)
    with torch.no_grad():
        return {k: float(dice(net.segment(xl, b, cam_mask), ml)) for k, b in boxes.items()}


def test_train_prompts_choose_the_box_sam_is_trained_with(tiny_sam_checkpoint):
    torch.manual_seed(1)
    batch = {"image": torch.rand(4, 1, SIZE, SIZE), CLASS_LABEL_KEY: torch.tensor([0, 1, 0, 1])}
    net = _net(tiny_sam_checkpoint)
    expected = _expected(net, batch)
    gap = abs(expected["cam"] - expected["gt"])
    assert gap > 1e-4  # the two boxes give (random, tiny) SAM different masks here
    for prompts in TRAIN_PROMPTS:
        out = float(_step(copy.deepcopy(net), prompts, batch)["seg_loss"])
        assert out == pytest.approx(expected[prompts], abs=gap / 100), prompts


@pytest.mark.parametrize("value", ["GT", "ground_truth", True, None])
def test_other_train_prompts_are_refused_in_one_line(value):
    with pytest.raises(ValueError) as refused:
        train_prompts_option(value)
    assert str(refused.value) == f"train_prompts: {value!r} is not one of ['cam', 'gt']"
    with pytest.raises(ValueError, match="^train_prompts: "):
        training_card({}, "sam_mix", train_prompts=value)


@pytest.mark.parametrize("gt_boxes, prompts", [(True, "gt"), (False, "cam")])
def test_cards_written_before_train_prompts_read_as_they_were_trained(gt_boxes, prompts):
    card = json.loads((CARDS / "sam_mix_stored.json").read_text())
    old = {**card, "training": {**{k: v for k, v in card["training"].items() if k != "train_prompts"},
                                "gt_boxes": gt_boxes}}
    old["classifier"] = {k: v for k, v in card["classifier"].items() if k != "output_stride"}
    validate_card(old, "sam_mix_stored", "model.pt")  # the schema still reads them
    new = upgrade_card(old)
    assert new["training"]["train_prompts"] == prompts and "gt_boxes" not in new["training"]
    assert "output_stride" not in new["classifier"]  # rebuilt as MONAI builds it, as it was trained
    assert upgrade_card(card) == card  # a current card is left as it is


def test_a_card_without_output_stride_rebuilds_the_classifier_it_was_trained_with(tiny_sam_checkpoint):
    old, new = _net(tiny_sam_checkpoint, None), _net(tiny_sam_checkpoint, 8)
    assert (old.output_stride, new.output_stride) == (16, 8)
    assert old.classifier.state_dict().keys() == new.classifier.state_dict().keys()


def test_the_card_schema_refuses_another_output_stride():
    card = json.loads((CARDS / "sam_mix.json").read_text())
    assert card["classifier"]["output_stride"] == 8
    validate_card(card, "sam_mix", "model_card.json")
    card["classifier"]["output_stride"] = 4
    with pytest.raises(Exception, match=r"field classifier.output_stride: 4 is not one of \[8, 16, 32\]"):
        validate_card(card, "sam_mix", "model_card.json")
