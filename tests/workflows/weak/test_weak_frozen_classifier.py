"""WeakMedSAM's classifiers: the default ResNet's CAM resolution, the SAM-encoder ones (frozen: no second encoder
pass; LoRA: one tuned pass gives CAM and M), the option's refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from weak_utils import TRAIN_WEAK, error_messages, run_weak
from workflow_utils import SAM_PRIORS

from bundle.networks.embedding_classifier import EmbeddingClassifier
from bundle.networks.parent_child import ParentChildClassifier
from bundle.sam.engine import SamEngine
from bundle.sam.loading import load_sam
from bundle.workflows.weak.classifier import load_classifier


def _config(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([SAM_PRIORS, TRAIN_WEAK])
    parser.update(overrides)
    return parser


def test_the_default_classifier_has_a_32_x_32_cam_for_a_256_x_256_slice():
    parser = _config()
    assert parser.get_parsed_content("classifier_network") == "resnet"
    network = parser.get_parsed_content("classifier_def")
    args = {k: v for k, v in network.items() if k not in ("kind", "block_channels", "lora_rank")}
    net = ParentChildClassifier(num_classes=1, num_subclasses=8, **args)
    roi = parser.get_parsed_content("roi_size")
    assert roi == [256, 256]  # the slices are resized to it: a 256 x 256 slice keeps its resolution
    with torch.no_grad():
        assert net.eval().raw_cam(torch.rand(1, args["in_channels"], *roi)).shape[-2:] == (32, 32)  # stride 8


def test_the_sam_classifiers_have_a_64_x_64_cam_for_a_256_x_256_slice_with_lite_medsam():
    engine = SamEngine(load_sam("lite_medsam"), batch_size=1)
    rng = np.random.default_rng(0)
    emb = engine.embed(rng.integers(0, 255, (1, 256, 256, 3), dtype=np.uint8)).embeddings
    net = EmbeddingClassifier(num_classes=1, num_subclasses=8, embedding_channels=emb.shape[1])
    assert net.cam(emb).shape == (1, 1, 64, 64)  # the paper's SAMUS: 32 x 32


def test_the_frozen_classifier_trains_and_labels_without_a_second_encoder_pass(phantom_set, tmp_path,
                                                                               shapes_sam_checkpoint, monkeypatch):
    data = phantom_set("brats")
    sam = {"priors#sam_checkpoint": str(shapes_sam_checkpoint), "classifier_network": "sam_frozen"}
    run_weak(data, tmp_path, "sam_features", **sam)
    partition = next((tmp_path / "priors" / "weak").glob("features-*/partition.json"))
    assert "image_embeddings" in json.loads(partition.read_text())["signature"]["prior"]
    calls = []

    def no_encoder(self, images):
        calls.append(len(images))
        raise AssertionError("the image encoder ran again after the sam_features stage")

    monkeypatch.setattr(SamEngine, "embed", no_encoder)
    for stage in ("subclasses", "classifier", "pseudo_labels", "pseudo_quality"):
        run_weak(data, tmp_path, stage, **sam)
    assert calls == []
    network, card = load_classifier(tmp_path / "models" / "classifier.pt")
    assert card["network"]["kind"] == "sam_frozen" and isinstance(network, EmbeddingClassifier)
    quality = json.loads((tmp_path / "run" / "pseudo_label_quality.json").read_text())
    assert quality["mean"]["pseudo_label"]["tumour"] is not None


def test_the_resnet_classifier_keeps_its_old_card(phantom_set, tmp_path, shapes_sam_checkpoint):
    data = phantom_set("brats")
    for stage in ("sam_features", "subclasses", "classifier"):
        run_weak(data, tmp_path, stage, **{"priors#sam_checkpoint": str(shapes_sam_checkpoint)},
                 classifier_network="resnet")
    partition = next((tmp_path / "priors" / "weak").glob("features-*/partition.json"))
    assert "image_embeddings" not in json.loads(partition.read_text())["signature"]["prior"]
    network, card = load_classifier(tmp_path / "models" / "classifier.pt")
    # the card of a ResNet classifier is what it was before the kinds: models trained then are reused, not retrained
    assert "kind" not in card["network"] and card["network"]["backbone"] == "resnet18"
    assert type(network).__name__ == "ParentChildClassifier"


def test_an_unknown_classifier_network_is_refused_before_any_sam_work(phantom_set, tmp_path, tiny_sam_checkpoint):
    data = phantom_set("brats")
    with pytest.raises(RuntimeError) as failed:
        run_weak(data, tmp_path, "sam_features", **{"priors#sam_checkpoint": str(tiny_sam_checkpoint)},
                 classifier_network="sam_frozn")
    chain = error_messages(failed.value)
    assert any(m.startswith("classifier_network:") and "'sam_frozen'" in m and "\n" not in m for m in chain), chain
    assert not list(tmp_path.rglob("partition.json"))  # no feature was computed


def test_the_lora_classifier_gives_cam_and_m_from_one_tuned_encoder_pass_per_slice(phantom_set, tmp_path,
                                                                                   shapes_sam_checkpoint, monkeypatch):
    from bundle.networks.sam_encoder_classifier import SamEncoderClassifier
    from bundle.sam.lora import has_lora

    data = phantom_set("brats")
    sam = {"priors#sam_checkpoint": str(shapes_sam_checkpoint), "classifier_network": "sam_lora",
           "classifier_lora_rank": 2}
    for stage in ("sam_features", "subclasses", "classifier"):
        run_weak(data, tmp_path, stage, **sam)
    network, card = load_classifier(tmp_path / "models" / "classifier.pt")
    assert card["network"]["kind"] == "sam_lora" and isinstance(network, SamEncoderClassifier) and has_lora(network)
    trained = [n for n, p in network.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n or not n.startswith("encoder.") for n in trained)  # the rest stays frozen
    seen, embed = [], SamEncoderClassifier.embed

    def counted(self, x):
        seen.append(int(x.shape[0]))
        return embed(self, x)

    def frozen_encoder(self, images):
        raise AssertionError("the pseudo labels must use the tuned encoder, not the frozen one")

    monkeypatch.setattr(SamEncoderClassifier, "embed", counted)
    monkeypatch.setattr(SamEngine, "embed", frozen_encoder)
    run_weak(data, tmp_path, "pseudo_labels", **sam)
    partition = next((tmp_path / "priors" / "weak").glob("features-*/partition.json")).parent
    sam_slices = sum(int(np.load(f).sum()) for f in partition.glob("*/sam_slices.*.npy"))
    assert sam_slices > 0 and sum(seen) == sam_slices  # every SAM slice once: CAM and M from the same pass


def test_the_resnet_classifier_sees_flair_alone_when_asked_and_refuses_to_reuse_it_for_four_channels(
        phantom_set, tmp_path, shapes_sam_checkpoint):
    data = phantom_set("brats")
    flair = {"priors#sam_checkpoint": str(shapes_sam_checkpoint), "classifier_channels": ["FLAIR"]}
    for stage in ("sam_features", "subclasses", "classifier", "pseudo_labels"):
        run_weak(data, tmp_path, stage, **flair)
    network, card = load_classifier(tmp_path / "models" / "classifier.pt")
    assert card["image_channel_names"] == ["FLAIR"] and card["network"]["in_channels"] == 1
    first_conv = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 1
    assert list((tmp_path / "priors" / "weak").glob("pseudo-labels-*/*/pseudo_label.*.nii.gz"))
    # the same run folders with all four channels: the FLAIR classifier is not what was asked for
    with pytest.raises(RuntimeError) as failed:
        run_weak(data, tmp_path, "classifier", **{"priors#sam_checkpoint": str(shapes_sam_checkpoint)})
    chain, change = error_messages(failed.value), 'image_channel_names ["FLAIR"] -> ["FLAIR","T1","T1ce","T2"]'
    assert any(change in m and "\n" not in m for m in chain), chain


def test_a_channel_selection_is_refused_for_the_sam_classifiers_before_any_sam_work(phantom_set, tmp_path,
                                                                                    tiny_sam_checkpoint):
    data = phantom_set("brats")
    for overrides, words in (({"classifier_network": "sam_frozen"}, "classifier_network resnet"),
                             ({}, "['DWI']")):
        channels = ["FLAIR"] if overrides else ["DWI"]
        with pytest.raises(RuntimeError) as failed:
            run_weak(data, tmp_path, "sam_features", **{"priors#sam_checkpoint": str(tiny_sam_checkpoint)},
                     classifier_channels=channels, **overrides)
        chain = error_messages(failed.value)
        assert any(m.startswith("classifier_channels") and words in m and "\n" not in m for m in chain), chain
    assert not list(tmp_path.rglob("partition.json"))
