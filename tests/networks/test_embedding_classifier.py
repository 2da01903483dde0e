"""The frozen-encoder WeakMedSAM classifier: parent/child heads on SAM image embeddings, its CAM on their grid."""

from __future__ import annotations

import pytest
import torch

from bundle.networks.embedding_classifier import EmbeddingClassifier
from bundle.workflows.weak.classifier import build_classifier


@pytest.mark.parametrize("block_channels", [0, 16])
def test_logits_cam_and_their_link(block_channels):
    torch.manual_seed(0)
    net = EmbeddingClassifier(num_classes=3, num_subclasses=2, embedding_channels=32, block_channels=block_channels)
    x = torch.randn(2, 32, 20, 20)
    parent, child = net.eval()(x)
    assert parent.shape == (2, 3) and child.shape == (2, 3 * 2 + 1)
    with torch.no_grad():  # the CAM's spatial mean is the parent logit: the CAM explains the decision
        torch.testing.assert_close(net.raw_cam(x).mean(dim=(2, 3)), parent, rtol=1e-4, atol=1e-5)
    cam = net.cam(x)
    assert cam.shape == (2, 3, 20, 20)  # the CAM is on the embedding grid, not coarser
    assert float(cam.amin()) == 0.0 and float(cam.amax()) == 1.0
    assert net.cam(x, size=(64, 64)).shape == (2, 3, 64, 64)


def test_linear_heads_put_the_cam_on_the_embedding_itself():
    net = EmbeddingClassifier(num_classes=1, num_subclasses=1, embedding_channels=4, block_channels=0)
    with torch.no_grad():
        net.parent_head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    x = torch.zeros(1, 4, 8, 8)
    x[0, 0, 2:4, 5:7] = 3.0  # the only evidence, in channel 0
    cam = net.cam(x)
    assert torch.equal(cam[0, 0] == 1.0, x[0, 0] == 3.0)


def test_wrong_inputs_and_arguments_are_refused():
    net = EmbeddingClassifier(num_classes=1, embedding_channels=8)
    with pytest.raises(ValueError, match=r"\[B, 8, g, g\]"):
        net(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="block_channels"):
        EmbeddingClassifier(num_classes=1, block_channels=-1)
    with pytest.raises(ValueError, match="num_classes"):
        EmbeddingClassifier(num_classes=0)


def test_build_classifier_dispatches_on_the_card_kind():
    frozen = build_classifier({"kind": "sam_frozen", "embedding_channels": 8, "block_channels": 4,
                               "num_classes": 2, "num_subclasses": 3})
    assert isinstance(frozen, EmbeddingClassifier) and frozen.num_children == 7
    old = build_classifier({"backbone": "resnet18", "spatial_dims": 2, "in_channels": 1, "num_classes": 1,
                            "num_subclasses": 2})  # a card from before the kinds: a ResNet
    assert type(old).__name__ == "ParentChildClassifier"
    with pytest.raises(ValueError, match="sam_frozen, sam_lora, resnet"):
        build_classifier({"kind": "vit", "num_classes": 1, "num_subclasses": 1})
