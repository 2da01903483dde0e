import math

import pytest
import torch
from monai.bundle import ConfigParser
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer, SliceInferer, SlidingWindowInferer
from monai.networks.nets import UNet
from workflow_utils import CONFIGS, untrained_model

from bundle.workflows.segmentation.inferer import SamAugInferer, SamAugPrepareBatch, selection_score
from bundle.workflows.segmentation.inputs import build_network_input, raw_network_input

RAW_LOGIT = math.log(0.8 / 0.2)  # p = 0.8 where the prior is zero (the raw input)


class PriorNet(torch.nn.Module):
    """Logits = the segmentation-prior channel of a ``channels`` input; a constant where that channel is 0."""

    def forward(self, x):
        s = x[:, 1:2]
        return torch.where(s == 0, torch.full_like(s, RAW_LOGIT), s)


def channels_inputs(s_values, spatial=(4, 4)):
    """[B, 3, *spatial] = cat(image, prior) with the given S per sample (B image channel 1)."""
    s = torch.stack([torch.as_tensor(v, dtype=torch.float32).expand(spatial) for v in s_values])[:, None]
    image = torch.rand(len(s_values), 1, *spatial)
    return torch.cat([image, s, torch.zeros_like(s)], dim=1)


def test_aug_only_and_raw():
    inputs = channels_inputs([2.0, 3.0])
    net = PriorNet()
    aug = SamAugInferer(SimpleInferer(), "channels", "aug_only", prior_scale=2.0)(inputs, net)
    torch.testing.assert_close(aug, inputs[:, 1:2] / 2.0)
    raw = SamAugInferer(SimpleInferer(), "channels", "raw")(inputs, net)
    torch.testing.assert_close(raw, torch.full_like(raw, RAW_LOGIT))
    # raw inference does not need the prior channels
    torch.testing.assert_close(SamAugInferer(SimpleInferer(), "channels", "raw")(inputs[:, :1], net), raw)


def test_entropy_select_per_sample():
    # sample 0: S ~ 0 -> p = 0.5 everywhere (max entropy): raw kept; sample 1: S = 20 -> p ~ 1: aug kept
    inputs = channels_inputs([1e-6, 20.0])
    inferer = SamAugInferer(SimpleInferer(), "channels", "entropy_select")
    out = inferer(inputs, PriorNet())
    torch.testing.assert_close(out[0], torch.full_like(out[0], RAW_LOGIT))
    torch.testing.assert_close(out[1], inputs[1, 1:2])
    assert inferer.last_selection.tolist() == [False, True]


def test_binary_entropy_and_margin_disagree():
    # aug: half the pixels certain, half p = 0.5 -> mean entropy 0.35 (< raw 0.50) but mean margin 0.25 (< raw 0.30)
    s = torch.full((4, 4), 1e-6)
    s[:2] = 50.0
    inputs = channels_inputs([s])
    binary = SamAugInferer(SimpleInferer(), "channels", "entropy_select", entropy="binary")
    margin = SamAugInferer(SimpleInferer(), "channels", "entropy_select", entropy="margin")
    torch.testing.assert_close(binary(inputs, PriorNet()), inputs[:, 1:2])
    torch.testing.assert_close(margin(inputs, PriorNet()), torch.full((1, 1, 4, 4), RAW_LOGIT))


def _authors_keeps_raw(p_raw, p_aug):
    """The authors' test-time rule, written from their description: min-max each sigmoid map, then the raw
    prediction is kept when its mean |q - 0.5| is strictly higher."""
    def indicator(p):
        q = (p - p.min()) / (p.max() - p.min() + 1e-8)
        return (q - 0.5).abs().mean()
    return bool(indicator(p_raw) > indicator(p_aug))


def test_margin_minmax_picks_the_authors_answer_where_margin_does_not():
    # raw: p = 0.8 everywhere: margin 0.3, after min-max q = 0 everywhere: 0.5
    # aug: half p ~ 1, a quarter p = 0.5, a quarter p = 0.75: margin 0.3125 (> 0.3, aug kept);
    #      min-max q = 1, 0, 0.5 -> 0.375 (< 0.5: raw kept, as the authors' code keeps it)
    s = torch.full((4, 4), 1e-6)
    s[:2] = 50.0
    s[3] = math.log(3.0)  # p = 0.75
    inputs = channels_inputs([s])
    net = PriorNet()
    p_aug, p_raw = torch.sigmoid(s), torch.full((4, 4), 0.8)
    assert _authors_keeps_raw(p_raw, p_aug)
    margin = SamAugInferer(SimpleInferer(), "channels", "entropy_select", entropy="margin")
    torch.testing.assert_close(margin(inputs, net), inputs[:, 1:2])
    authors = SamAugInferer(SimpleInferer(), "channels", "entropy_select", entropy="margin_minmax")
    torch.testing.assert_close(authors(inputs, net), torch.full((1, 1, 4, 4), RAW_LOGIT))
    assert authors.last_selection.tolist() == [False]
    torch.testing.assert_close(selection_score(torch.logit(p_aug)[None, None], "margin_minmax"),
                               torch.tensor([0.375]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("selection", ["sample", "slice"])
def test_margin_minmax_matches_the_authors_rule_on_random_pairs(selection):
    gen = torch.Generator().manual_seed(0)
    shape = (40, 1, 6, 5, 3)  # 40 pairs of volumes with 3 slices; "sample" scores whole volumes
    scale = torch.rand(40, 1, 1, 1, 1, generator=gen) * 6
    raw = torch.randn(shape, generator=gen) * scale + torch.randn(40, 1, 1, 1, 1, generator=gen) * 3
    aug = torch.randn(shape, generator=gen) * scale + torch.randn(40, 1, 1, 1, 1, generator=gen) * 3
    keep_aug = selection_score(aug, "margin_minmax", selection) >= selection_score(raw, "margin_minmax", selection)
    if selection == "sample":
        units = [(b, ...) for b in range(40)]
    else:
        units = [(b, ..., d) for b in range(40) for d in range(3)]
    expected = [not _authors_keeps_raw(torch.sigmoid(raw[u]), torch.sigmoid(aug[u])) for u in units]
    assert keep_aug.flatten().tolist() == expected
    margin = selection_score(aug, "margin", selection) >= selection_score(raw, "margin", selection)
    assert margin.flatten().tolist() != expected  # the plain margin is another rule on these pairs


@pytest.mark.parametrize("files, key", [(["inference.json"], "inferer"),
                                        (["sam_priors.json", "train_samaug_seg.json"], "validate#inferer")])
def test_configs_reach_the_authors_selection(files, key, tmp_path):
    """``--infer_mode entropy_select --entropy margin_minmax --entropy_selection slice`` (docs/methods.md §2) reaches
    the inferer of inference and of evaluation; the default selects per sample."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser["model_dir"] = str(untrained_model(tmp_path))  # inference reads the rest from the model card
    assert parser.get_parsed_content(key).selection == "sample"
    parser.update({"infer_mode": "entropy_select", "entropy": "margin_minmax", "entropy_selection": "slice"})
    inferer = parser.get_parsed_content(key, lazy=False)
    assert (inferer.infer_mode, inferer.entropy, inferer.selection) == ("entropy_select", "margin_minmax", "slice")


def test_selection_score_values():
    logits = torch.zeros(1, 1, 2, 2)
    torch.testing.assert_close(selection_score(logits), torch.tensor([-math.log(2)]))
    torch.testing.assert_close(selection_score(logits, "margin"), torch.tensor([0.0]))
    assert selection_score(torch.zeros(2, 1, 3, 3, 5), selection="slice").shape == (2, 5)


def test_entropy_select_per_slice_on_volume_with_2d_network():
    # a 2D network run slice by slice on a volume; select per axial slice
    s = torch.full((4, 4, 3), 1e-6)
    s[..., 1] = 20.0
    inputs = channels_inputs([s], spatial=(4, 4, 3))
    inferer = SamAugInferer(
        SliceInferer(roi_size=(4, 4), spatial_dim=2), "channels", "entropy_select", selection="slice"
    )
    out = inferer(inputs, PriorNet())
    assert inferer.last_selection.tolist() == [[False, True, False]]
    torch.testing.assert_close(out[..., 1], inputs[:, 1:2, ..., 1])
    torch.testing.assert_close(out[..., 0], torch.full((1, 1, 4, 4), RAW_LOGIT))


def test_wraps_sliding_window_3d_unet():
    torch.manual_seed(0)
    net = UNet(3, 6, 2, channels=(4, 8), strides=(2,)).eval()
    image, prior = torch.rand(1, 4, 8, 8, 8), torch.rand(1, 2, 8, 8, 8)
    window = SlidingWindowInferer(roi_size=(8, 8, 4), sw_batch_size=2)
    inferer = SamAugInferer(window, "concat", image_channels=4)
    with torch.no_grad():
        out = inferer(torch.cat([image, prior], 1), net)
        expected = window(build_network_input(image, prior, "concat"), net)
    assert out.shape == (1, 2, 8, 8, 8)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_option_errors():
    with pytest.raises(ValueError, match="infer_mode='raw'"):
        SamAugInferer(SimpleInferer(), "none", "entropy_select")
    with pytest.raises(ValueError, match="entropy_select"):
        SamAugInferer(SimpleInferer(), "add", "entropy")
    with pytest.raises(ValueError, match="needs the prior"):
        SamAugInferer(SimpleInferer(), "add", "aug_only")(torch.rand(1, 1, 4, 4), PriorNet())
    with pytest.raises(ValueError, match="4 channels"):
        SamAugInferer(SimpleInferer(), "concat", image_channels=1)(torch.rand(1, 4, 4, 4), PriorNet())


@pytest.mark.parametrize("prior_mode, in_channels", [("concat", 3), ("none", 1)])
def test_supervised_evaluator_end_to_end(prior_mode, in_channels):
    torch.manual_seed(0)
    net = UNet(3, in_channels, 1, channels=(4, 8), strides=(2,))
    data = [
        {
            "image": torch.rand(1, 1, 8, 8, 4),
            "image_prior": torch.rand(1, 2, 8, 8, 4),
            "label": torch.ones(1, 1, 8, 8, 4),
        }
    ]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=data,
        network=net,
        prepare_batch=SamAugPrepareBatch(prior_mode=prior_mode),
        inferer=SamAugInferer(SimpleInferer(), prior_mode, "raw" if prior_mode == "none" else "entropy_select"),
        decollate=False,
    )
    evaluator.run()
    out = evaluator.state.output
    assert out["pred"].shape == (1, 1, 8, 8, 4)
    assert out["image"].shape[1] == (3 if prior_mode == "concat" else 1)
    if prior_mode == "concat":
        with torch.no_grad():
            image, prior = data[0]["image"], data[0]["image_prior"]
            candidates = [net(raw_network_input(image, "concat")), net(torch.cat([image, prior], 1))]
        assert any(torch.allclose(out["pred"], c, atol=1e-5) for c in candidates)


def test_prepare_batch():
    batch = {"image": torch.rand(2, 4, 4, 4), "image_prior": torch.rand(2, 2, 4, 4)}
    inputs, label = SamAugPrepareBatch(prior_mode="concat")(batch, torch.device("cpu"))
    assert inputs.shape == (2, 6, 4, 4) and label is None
    torch.testing.assert_close(inputs[:, 4:], batch["image_prior"])
    inputs, _ = SamAugPrepareBatch(prior_mode="none")({"image": batch["image"]})
    assert inputs.shape == (2, 4, 4, 4)
    with pytest.raises(KeyError, match="image_prior"):
        SamAugPrepareBatch(prior_mode="add")({"image": batch["image"]})
