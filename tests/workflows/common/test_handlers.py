import warnings

import pytest
import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import MeanDice, TensorBoardStatsHandler, ValidationHandler, from_engine
from monai.inferers import SimpleInferer
from monai.networks.nets import UNet
from monai.transforms import Activationsd, AsDiscreted, Compose
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from bundle.workflows.common.handlers import (
    LearningRateLogger,
    PerClassMetricLogger,
    PriorImageLogger,
    TextLogger,
    largest_label_slice,
    per_class_means,
    to_unit_range,
)
from bundle.workflows.segmentation.inferer import SamAugInferer, SamAugPrepareBatch
from bundle.workflows.segmentation.train_step import SamAugTrainStep

SPATIAL = (8, 8, 4)


def volume_case(seed, fg_slice):
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(2, *SPATIAL)
    label[0, 2:6, 2:6, fg_slice] = 1  # largest foreground area in slice fg_slice
    label[1, 3:5, 3:5, :] = 1
    return {
        "image": torch.rand(1, 1, *SPATIAL, generator=g),
        "image_prior": torch.rand(1, 2, *SPATIAL, generator=g) * 3,
        "label": label[None],
    }


def accumulator(log_dir):
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_tensorboard_review_of_training_run(tmp_path):
    torch.manual_seed(0)
    net = UNet(3, 3, 2, channels=(4, 8), strides=(2,))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    writer = SummaryWriter(log_dir=str(tmp_path))
    val_data = [volume_case(seed, fg_slice) for seed, fg_slice in [(1, 1), (2, 3), (3, 0)]]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=val_data,
        network=net,
        prepare_batch=SamAugPrepareBatch(prior_mode="concat"),
        inferer=SamAugInferer(SimpleInferer(), "concat"),
        postprocessing=Compose([Activationsd("pred", sigmoid=True), AsDiscreted("pred", threshold=0.5)]),
        key_val_metric={"val_mean_dice": MeanDice(output_transform=from_engine(["pred", "label"]))},
        val_handlers=[
            PerClassMetricLogger("val_mean_dice", class_names=["liver", "tumour"]),
            TensorBoardStatsHandler(summary_writer=writer, iteration_log=False),
            PriorImageLogger(summary_writer=writer, channel_names=["CT"], max_cases=2),
        ],
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=val_data[:1],
        network=net,
        optimizer=optimizer,
        loss_function=torch.nn.BCEWithLogitsLoss(),
        iteration_update=SamAugTrainStep("concat"),
        train_handlers=[
            TextLogger("prior_generator", lambda: {"generator": "RegionProposalMasks", "weights": None}, writer),
            LearningRateLogger(optimizer, summary_writer=writer),
            ValidationHandler(validator=evaluator, interval=1),
        ],
    )
    trainer.run()
    writer.close()

    assert {"val_mean_dice_liver", "val_mean_dice_tumour"} <= set(evaluator.state.metrics)
    events = accumulator(tmp_path)
    tags = events.Tags()
    assert {"val_mean_dice", "val_mean_dice_liver", "val_mean_dice_tumour", "lr"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("val_mean_dice_tumour")] == [1, 2]
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([0.1, 0.1])
    expected_images = {
        f"val/case{c}/{name}"
        for c in (0, 1)
        for name in ("CT", "sam_seg_prior", "sam_boundary_prior", "label0", "label1", "pred0", "pred1")
    }
    assert expected_images == set(tags["images"])  # case2 never written
    assert [e.step for e in events.Images("val/case0/sam_seg_prior")] == [1, 2]  # global step = trainer epoch
    assert events.Images("val/case1/CT")[0].height == 8 and events.Images("val/case1/CT")[0].width == 8
    assert "prior_generator/text_summary" in tags["tensors"]
    text = events.Tensors("prior_generator/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "RegionProposalMasks" in text


def test_prior_image_logger_slice_choice_and_2d(tmp_path):
    # 3D: remembers the largest-label slice per case
    logger3d = PriorImageLogger(log_dir=str(tmp_path / "3d"), max_cases=2)
    torch.manual_seed(0)
    net3d = UNet(3, 3, 1, channels=(4, 8), strides=(2,))
    data3d = [volume_case(1, 1), volume_case(2, 3)]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=data3d,
        network=net3d,
        prepare_batch=SamAugPrepareBatch(prior_mode="concat"),
        inferer=SamAugInferer(SimpleInferer(), "concat"),
        val_handlers=[logger3d],
    )
    evaluator.run()
    assert logger3d.slices == {0: 1, 1: 3}
    logger3d.close()

    # 2D, batched (not decollated) output, epoch_getter for the global step
    net2d = UNet(2, 3, 1, channels=(4, 8), strides=(2,))
    data2d = [
        {"image": torch.rand(3, 1, 8, 8), "image_prior": torch.rand(3, 2, 8, 8), "label": torch.ones(3, 1, 8, 8)}
    ]
    logger2d = PriorImageLogger(log_dir=str(tmp_path / "2d"), max_cases=2, epoch_getter=lambda e: 7)
    SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=data2d,
        network=net2d,
        prepare_batch=SamAugPrepareBatch(prior_mode="add"),
        inferer=SamAugInferer(SimpleInferer(), "add"),
        val_handlers=[logger2d],
        decollate=False,
    ).run()
    logger2d.close()
    events = accumulator(tmp_path / "2d")
    assert set(events.Tags()["images"]) == {
        f"val/case{c}/{n}" for c in (0, 1) for n in ("image", "sam_seg_prior", "sam_boundary_prior", "label", "pred")
    }
    assert events.Images("val/case0/pred")[0].step == 7


def test_helpers():
    label = torch.zeros(1, 4, 4, 5)
    label[0, :3, :3, 2] = 1
    label[0, 0, 0, 4] = 1
    assert largest_label_slice(label, 5) == 2
    assert largest_label_slice(None, 5) == 2
    assert largest_label_slice(torch.zeros(1, 4, 4, 6), 6) == 3
    onehot = torch.zeros(2, 4, 4, 3)
    onehot[0] = 1
    onehot[0, :2, :2, 1], onehot[1, :2, :2, 1] = 0, 1
    assert largest_label_slice(onehot, 3) == 1  # background channel ignored
    unit = to_unit_range(torch.tensor([[2.0, 4.0], [6.0, 10.0]]))
    assert unit.min() == 0 and unit.max() == 1
    assert to_unit_range(torch.ones(2, 2)).eq(1).all()
    details = torch.tensor([[1.0, float("nan")], [0.5, 0.2]])
    torch.testing.assert_close(per_class_means(details), torch.tensor([0.75, 0.2]))


def test_per_class_logger_errors():
    class State:
        metric_details = {"val_mean_dice": torch.rand(3, 2)}
        metrics = {}

    class FakeEngine:
        state = State()

    with pytest.raises(ValueError, match="2 classes per sample but 3 class_names"):
        PerClassMetricLogger(class_names=["a", "b", "c"])(FakeEngine())
    with pytest.raises(RuntimeError, match="save_details=True"):
        PerClassMetricLogger("val_hd95")(FakeEngine())
    PerClassMetricLogger()(FakeEngine())
    assert set(State.metrics) == {"val_mean_dice_0", "val_mean_dice_1"}


def test_prior_image_logger_without_label_and_prediction(tmp_path):
    # a classification batch: 2D slices with their priors, a class vector as label, class scores as output
    batch = {"image": torch.rand(2, 1, 8, 8), "image_prior": torch.rand(2, 1, 8, 8), "label": torch.ones(2, 3)}

    class State:
        epoch = 4
        output = {"pred": torch.rand(2, 3)}

    State.batch = batch

    class FakeEngine:
        state = State()

    logger = PriorImageLogger(log_dir=str(tmp_path), label_key=None, pred_key=None, max_cases=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is skipped with a warning: label and prediction are left out
        logger(FakeEngine())
    logger.close()
    events = accumulator(tmp_path)
    assert set(events.Tags()["images"]) == {"val/case0/image", "val/case0/image_prior"}
    assert events.Images("val/case0/image_prior")[0].step == 4
