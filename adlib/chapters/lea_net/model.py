"""LEA-Net: a colour anomaly map as layer-wise external attention for a supervised classifier.

Written from the paper (lea_net) and its official Keras code (read, none of it copied); what
differs from either is declared in :data:`adlib.chapters.lea_net.card.DEVIATIONS` (the chapter's
deviations table). Two steps:

    colour map  a U-Net colouriser (paper Table 9: 4x4 stride-2 convolutions down to 1x1,
                2x2 transposed convolutions up, skips, sigmoid) learns a*b* from L* on the
                fold's *normal* training images (FancyPCA augmentation, MSE); the map is the
                CIEDE2000 difference between the input and its recoloured twin, on true
                CIELAB values (scikit-image ``rgb2lab`` / ``deltaE_ciede2000``; the official
                code converts an already-Lab image to Lab a second time), divided by its
                maximum
    LEA-Net     an anomaly detection network (ADN: ResNet18, VGG16 or a basic CNN, from
                scratch) and a colour anomaly attention network (CAAN: ResNet-based or
                MobileNetV3-Small-based, on the 1-channel map); at one attention point p
                (after the stem and after each of the four stages) the ADN feature becomes
                ``f + f * M`` with ``M = sigmoid(channel mean of the CAAN feature at p)``
                (Eq. 2-3); loss BCE(ADN) + BCE(CAAN) (Eq. 1); prediction = ADN logit > 0
    baselines   ADN alone (RGB), the map as input, RGB + map as a 4-channel input, the
                attentioned input ``x + x * map``, and "direct attention" (the map itself,
                area-resized to each point, in place of the CAAN feature)

Where a constant CAAN feature carries no information, ``sigmoid(0) = 0.5`` and the attention
only scales the feature by 1.5 everywhere (batch norm after it absorbs that); the official
code also multiplies M by a learnable scalar per point that starts at 0 (``gate="learned"``),
so training starts from the plain ADN. The paper's equation has no such scalar: the default.
``width`` scales every network's channels (64 = the paper's); CPU profiles use fewer. After
training, the batch-norm statistics are recomputed on the training images
(:func:`recompute_batch_norm`): a short run's running averages still carry their start values.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import deltaE_ciede2000, lab2rgb, rgb2lab
from torch import nn
from torch.utils.data import TensorDataset
from torchvision.models import mobilenet_v3_small
from torchvision.models.resnet import BasicBlock, Bottleneck

from adlib.analysis.metrics import f1_at_threshold, f1_max, image_auroc
from adlib.nn import count_parameters as count
from adlib.training.detector import Detector, image_scores
from adlib.training.train import fit

ADNS = ("resnet18", "vgg16", "basic_cnn", "resnet50", "vgg19")
CAANS = ("none", "direct", "resnet", "mobilenet")
INPUTS = ("rgb", "map", "4ch", "attentioned")
POINTS = (1, 2, 3, 4, 5)
BN_STATS = ("recomputed", "running")


# ------------------------------------------------------------------------------- colour

def _layout(x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """A 4-D batch in the channels-last memory layout (the values are unchanged)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


_XYZ_FROM_RGB = torch.tensor([[0.412453, 0.357580, 0.180423],
                              [0.212671, 0.715160, 0.072169],
                              [0.019334, 0.119193, 0.950227]])
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883])


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], (N, 3, H, W) -> CIELAB (D65, 2 degrees), as scikit-image's ``rgb2lab``."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,njhw->nihw", _XYZ_FROM_RGB.to(rgb), linear)
    xyz = xyz / _WHITE_D65.to(rgb).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    L = torch.where(xyz[:, 1:2] > 0.008856, 116 * f[:, 1:2] - 16, 903.3 * xyz[:, 1:2])
    return torch.cat([L, 500 * (f[:, 0:1] - f[:, 1:2]), 200 * (f[:, 1:2] - f[:, 2:3])], 1)


def delta_e00(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference of CIELAB arrays with the channel last (Sharma et al. 2005)."""
    return deltaE_ciede2000(np.asarray(lab1, np.float64), np.asarray(lab2, np.float64), channel_axis=-1)


def fancy_pca(images: torch.Tensor, alpha_std: float = 0.08,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Krizhevsky et al.'s PCA colour augmentation, per image: add ``sum_i a_i lambda_i p_i``
    (eigenvalues / eigenvectors of the image's RGB covariance, ``a_i ~ N(0, alpha_std)``)."""
    n = images.shape[0]
    pixels = images.flatten(2).transpose(1, 2)                       # (N, HW, 3)
    centred = pixels - pixels.mean(1, keepdim=True)
    cov = centred.transpose(1, 2) @ centred / max(pixels.shape[1] - 1, 1)
    eigval, eigvec = torch.linalg.eigh(cov)
    alpha = torch.randn(n, 3, generator=generator) * alpha_std
    shift = eigvec @ (alpha.to(images) * eigval.clamp_min(0)).unsqueeze(-1)   # (N, 3, 1)
    return (images + shift.view(n, 3, 1, 1)).clamp(0, 1)


class UNetColouriser(nn.Module):
    """Table 9's U-Net: L* (N, 1, S, S) in [0, 1] -> a*b* (N, 2, S, S) in [0, 1].

    log2(S) stride-2 4x4 convolutions (BN except the first, LeakyReLU 0.2) down to 1x1, as many
    2x2 stride-2 transposed convolutions up (BN + ReLU; dropout 0.5 on the three deepest), each
    concatenated with its skip, the last to 2 channels with a sigmoid. Channels: width x (1, 2,
    4, 8, 8, ...)."""

    def __init__(self, image_size: int = 256, width: int = 64):
        super().__init__()
        depth = int(math.log2(image_size))
        if 2 ** depth != image_size:
            msg = f"UNetColouriser needs a power-of-two image size, got {image_size}"
            raise ValueError(msg)
        chans = [width * min(2 ** i, 8) for i in range(depth)]
        self.down = nn.ModuleList()
        prev = 1
        for i, c in enumerate(chans):
            layers: list[nn.Module] = [nn.Conv2d(prev, c, 4, 2, 1, bias=i == 0)]
            if i > 0 and i < depth - 1:   # no BN on a 1x1 map of batch 1 either
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.LeakyReLU(0.2))
            self.down.append(nn.Sequential(*layers))
            prev = c
        self.up = nn.ModuleList()
        for j, i in enumerate(range(depth - 2, -1, -1)):
            c = chans[i]
            layers = [nn.ConvTranspose2d(prev, c, 2, 2, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            if j < 3:
                layers.append(nn.Dropout(0.5))
            self.up.append(nn.Sequential(*layers))
            prev = 2 * c
        self.out = nn.ConvTranspose2d(prev, 2, 2, 2)

    def forward(self, L: torch.Tensor) -> torch.Tensor:
        skips, x = [], L
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        for layer, skip in zip(self.up, reversed(skips[:-1])):
            x = torch.cat([layer(x), skip], 1)
        return torch.sigmoid(self.out(x))


def _lab_scaled(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB -> (L*/100, (a*b* + 128)/255): the colouriser's input and target in [0, 1]."""
    lab = rgb_to_lab(images)
    return lab[:, :1] / 100, (lab[:, 1:] + 128) / 255


def train_colouriser(images: torch.Tensor, *, image_size: int, width: int = 64, epochs: int = 500,
                     lr: float = 1e-3, batch_size: int = 16, alpha_std: float = 0.08, seed: int = 0,
                     device: str = "auto", amp: bool = True, progress: bool | str = False,
                     checkpoint_dir=None, channels_last: bool = True):
    """Train a :class:`UNetColouriser` on normal images (N, 3, S, S) in [0, 1] (MSE on a*b*,
    Adam, FancyPCA each epoch); returns :class:`adlib.training.train.FitResult` (last epoch's weights).
    ``channels_last``: the memory layout (faster on CPUs and GPUs; the same computation)."""
    generator = torch.Generator().manual_seed(seed)

    def batches(epoch: int):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            chunk = fancy_pca(images[order[start:start + batch_size]], alpha_std, generator)
            yield _lab_scaled(chunk)

    def loss(model, batch):
        L, ab = batch
        return F.mse_loss(model(L), ab)

    torch.manual_seed(seed)   # the initial weights: torch's own RNG starts at a random seed
    model = UNetColouriser(image_size, width)
    return fit(model, loss, batches, epochs=epochs, optimizer="adam", lr=lr, device=device,
               seed=seed, amp=amp, progress=progress, desc="colouriser",
               checkpoint_dir=checkpoint_dir, channels_last=channels_last)


@torch.no_grad()
def recolour(colouriser: nn.Module, images: torch.Tensor, batch_size: int = 64) -> dict[str, np.ndarray]:
    """The colour-map pipeline for images (N, 3, S, S) in [0, 1], as numpy arrays:
    ``L`` (N, S, S), ``predicted`` (N, S, S, 3: the predicted a*b* at L* = 60), ``recoloured``
    (N, S, S, 3 RGB), ``delta_e`` (N, S, S: CIEDE2000 between input and recoloured, on true
    Lab values), ``map`` (delta_e / its maximum) and ``max_delta_e`` (N,)."""
    colouriser.eval()
    device = next(colouriser.parameters()).device
    ab = torch.cat([colouriser(_layout(_lab_scaled(images[i:i + batch_size].to(device))[0])).float().cpu()
                    for i in range(0, len(images), batch_size)])
    rgb = images.permute(0, 2, 3, 1).double().numpy()
    lab_in = rgb2lab(rgb, channel_axis=-1)
    ab_pred = ab.permute(0, 2, 3, 1).double().numpy() * 255 - 128
    recoloured = lab2rgb(np.concatenate([lab_in[..., :1], ab_pred], -1), channel_axis=-1)
    flat = np.concatenate([np.full_like(lab_in[..., :1], 60.0), ab_pred], -1)
    delta = delta_e00(lab_in, rgb2lab(recoloured, channel_axis=-1))
    peak = delta.reshape(len(delta), -1).max(1)
    return {"L": lab_in[..., 0], "predicted": lab2rgb(flat, channel_axis=-1), "recoloured": recoloured,
            "delta_e": delta, "map": delta / np.maximum(peak, 1e-12)[:, None, None],
            "max_delta_e": peak}


def colour_anomaly_maps(colouriser: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps (N, 1, S, S) in [0, 1] (each divided by its maximum) and each raw maximum (N,)."""
    out = recolour(colouriser, images)
    return (torch.from_numpy(out["map"]).float().unsqueeze(1),
            torch.from_numpy(out["max_delta_e"]).float())


# ------------------------------------------------------------------------------- networks

def _basic_block(cin: int, cout: int, stride: int) -> nn.Module:
    down = None
    if stride != 1 or cin != cout:
        down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    return BasicBlock(cin, cout, stride, down)


def _stem(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 7, 2, 3, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Staged(nn.Module):
    """A network as five stages (attention point p follows stage p) and a head -> 1 logit."""

    stages: nn.ModuleList
    head: nn.Module

    def forward(self, x: torch.Tensor, hook=None) -> torch.Tensor:
        for p, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if hook is not None:
                x = hook(p, x)
        return self.head(x).squeeze(1)


class ResNet18(Staged):
    """ResNet18 (two basic blocks a stage); points at 1/2 (stem), 1/4, 1/8, 1/16, 1/32."""

    def __init__(self, in_channels: int = 3, width: int = 64, blocks: int = 2):
        super().__init__()
        w = [width, width, 2 * width, 4 * width, 8 * width]
        stages = [_stem(in_channels, w[0])]
        for i in range(1, 5):
            first = [nn.MaxPool2d(3, 2, 1)] if i == 1 else []
            layers = first + [_basic_block(w[i - 1], w[i], 1 if i == 1 else 2)]
            layers += [_basic_block(w[i], w[i], 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w[4], 1))


class ResNet50(Staged):
    """ResNet50 (3-4-6-3 bottleneck blocks, 4x expansion), points as :class:`ResNet18`'s; a
    baseline ADN of the paper's Table 3 (no attention there)."""

    def __init__(self, in_channels: int = 3, width: int = 64, blocks: Sequence[int] = (3, 4, 6, 3)):
        super().__init__()

        stages: list[nn.Module] = [_stem(in_channels, width)]
        prev = width
        for i, n in enumerate(blocks):
            planes, layers = width * 2 ** i, [nn.MaxPool2d(3, 2, 1)] if i == 0 else []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                down = None
                if stride != 1 or prev != 4 * planes:
                    down = nn.Sequential(nn.Conv2d(prev, 4 * planes, 1, stride, bias=False),
                                         nn.BatchNorm2d(4 * planes))
                layers.append(Bottleneck(prev, planes, stride, down))
                prev = 4 * planes
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, 1))


class VGG16(Staged):
    """VGG16 (2-2-3-3-3 3x3 convolutions, max-pool after each group = the points), two dense
    layers of 64 x width units (4096 at the paper's width) on the flattened last map.

    Initialised as the official code (Keras): He-normal convolutions, Glorot-uniform dense
    layers, zero biases. Without batch norm the initial scale matters: with PyTorch's default
    (a third of He's variance per layer) the logit hardly depends on the image at the start
    (its spread over images about 1e-7), and at the paper's 1e-5 the loss stayed at 0.68 for
    30 epochs of the study's size; with this one it fell to 0.22 (F1 0.75 on a fold)."""

    groups: tuple[int, ...] = (2, 2, 3, 3, 3)

    def __init__(self, in_channels: int = 3, width: int = 64, image_size: int = 256):
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        stages, prev = [], in_channels
        for c, n in zip(w, self.groups):
            layers: list[nn.Module] = []
            for _ in range(n):
                layers += [nn.Conv2d(prev, c, 3, 1, 1), nn.ReLU()]
                prev = c
            stages.append(nn.Sequential(*layers, nn.MaxPool2d(2)))
        self.stages = nn.ModuleList(stages)
        dense, side = 64 * width, image_size // 32
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(prev * side * side, dense), nn.ReLU(),
                                  nn.Linear(dense, dense), nn.ReLU(), nn.Linear(dense, 1))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)


class VGG19(VGG16):
    """VGG19 (2-2-4-4-4 convolutions), otherwise :class:`VGG16`; a baseline of Table 3."""

    groups = (2, 2, 4, 4, 4)


class BasicCNN(Staged):
    """The appendix's basic CNN: five 3x3 stride-2 convolutions (BN, ReLU), flatten, dense."""

    def __init__(self, in_channels: int = 3, width: int = 64, image_size: int = 256):
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        stages, prev = [], in_channels
        for c in w:
            stages.append(nn.Sequential(nn.Conv2d(prev, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU()))
            prev = c
        self.stages = nn.ModuleList(stages)
        side = image_size // 32
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(prev * side * side, 1))


class ResNetCAAN(ResNet18):
    """The ResNet-based CAAN: a 7x7 stride-2 stem, then one basic block a stage, on the map."""

    def __init__(self, width: int = 64):
        super().__init__(1, width, blocks=1)


class MobileNetCAAN(Staged):
    """The MobileNetV3-Small-based CAAN (torchvision's layout, 1 input channel), cut as Table 1:
    points after the stem (1/2) and after the bottlenecks ending at 1/4, 1/8, 1/16 and 1/32
    (point 5: the last 96-channel bottleneck); the 1x1 convolution to 576 channels, the average
    pool and Table 1's 1x1 to 1280 (20 x width; MobileNetV3-Small's own head has 1024) form
    the head."""

    def __init__(self, width: int = 64):
        super().__init__()

        net = mobilenet_v3_small(width_mult=width / 64, num_classes=1)
        stem = net.features[0]
        conv = stem[0]
        stem[0] = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
        f = net.features
        self.stages = nn.ModuleList([f[0], f[1], f[2:4], f[4:9], f[9:12]])
        last = f[12][0].out_channels                   # the 1x1 convolution to 576 (x width / 64)
        classifier = net.classifier                    # Linear, Hardswish, Dropout, Linear
        classifier[0] = nn.Linear(last, 20 * width)
        classifier[3] = nn.Linear(20 * width, 1)
        for linear in (classifier[0], classifier[3]):  # torchvision's initialisation of these
            nn.init.normal_(linear.weight, 0, 0.01)
            nn.init.zeros_(linear.bias)
        self.head = nn.Sequential(f[12], net.avgpool, nn.Flatten(), classifier)


def make_adn(name: str, in_channels: int, width: int, image_size: int) -> Staged:
    if name == "resnet18":
        return ResNet18(in_channels, width)
    if name == "vgg16":
        return VGG16(in_channels, width, image_size)
    if name == "basic_cnn":
        return BasicCNN(in_channels, width, image_size)
    if name == "resnet50":
        return ResNet50(in_channels, width)
    if name == "vgg19":
        return VGG19(in_channels, width, image_size)
    msg = f"unknown ADN {name!r}; expected one of {ADNS}"
    raise ValueError(msg)


def external_attention(f: torch.Tensor, g: torch.Tensor, gate: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Eq. 2-3: ``f + f * gate * sigmoid(mean_c g)``, g resized to f's grid where they differ."""
    m = torch.sigmoid(g.mean(1, keepdim=True))
    if m.shape[-2:] != f.shape[-2:]:
        m = F.interpolate(m, size=f.shape[-2:], mode="bilinear", align_corners=False)
    return f + f * (gate * m)


class LEANet(nn.Module):
    """ADN + CAAN with external attention at one point; ``forward(x, m) -> (adn_logit,
    caan_logit or None)``. x: RGB (N, 3, S, S) in [0, 1]; m: colour map (N, 1, S, S)."""

    def __init__(self, adn: str = "resnet18", caan: str = "resnet", point: int = 1,
                 input: str = "rgb", width: int = 64, image_size: int = 256, gate: str = "paper"):
        super().__init__()
        if caan not in CAANS or input not in INPUTS or gate not in ("paper", "learned"):
            msg = (f"caan={caan!r}, input={input!r}, gate={gate!r}; expected caan in {CAANS}, "
                   f"input in {INPUTS}, gate 'paper' or 'learned'")
            raise ValueError(msg)
        if caan != "none" and point not in POINTS:
            msg = f"attention point {point!r}; expected one of {POINTS}"
            raise ValueError(msg)
        self.caan_kind, self.point, self.input = caan, point, input
        self.adn = make_adn(adn, {"rgb": 3, "map": 1, "4ch": 4, "attentioned": 3}[input], width, image_size)
        self.caan = (ResNetCAAN(width) if caan == "resnet" else MobileNetCAAN(width)
                     if caan == "mobilenet" else None)
        self.gate = nn.Parameter(torch.zeros(1)) if gate == "learned" else None
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5, 0.5]).view(1, 4, 1, 1))

    def _adn_input(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        if self.input == "map":
            return (m - 0.5) / 0.5
        if self.input == "4ch":
            return (torch.cat([x, m], 1) - 0.5) / 0.5
        if self.input == "attentioned":
            return (x + x * m - 0.5) / 0.5
        return (x - 0.5) / 0.5

    def attention_features(self, m: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
        """The CAAN's feature at every point (the resized map for direct attention) and its logit."""
        if self.caan_kind == "none":
            return {}, None
        if self.caan_kind == "direct":
            feats, x = {}, m
            for p in POINTS:
                x = F.avg_pool2d(x, 2)
                feats[p] = x
            return feats, None
        feats = {}

        def keep(p, h):
            feats[p] = h
            return h

        logit = self.caan(m, hook=keep)
        return feats, logit

    def forward(self, x: torch.Tensor, m: torch.Tensor, trace: dict | None = None):
        feats, caan_logit = self.attention_features(m)
        gate = self.gate if self.gate is not None else 1.0

        def attend(p, f):
            if p != self.point or p not in feats:
                return f
            out = external_attention(f, feats[p], gate)
            if trace is not None:
                trace.update(before=f.detach(), after=out.detach(), attention=feats[p].detach())
            return out

        return self.adn(self._adn_input(x, m), hook=attend), caan_logit


def lea_loss(model: LEANet, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Eq. 1: BCE(ADN) + BCE(CAAN) (the CAAN term only where there is a CAAN)."""
    x, m, y = batch
    adn, caan = model(x, m)
    terms = {"adn": F.binary_cross_entropy_with_logits(adn.float(), y.float())}
    loss = terms["adn"]
    if caan is not None:
        terms["caan"] = F.binary_cross_entropy_with_logits(caan.squeeze(-1).float() if caan.dim() > 1
                                                           else caan.float(), y.float())
        loss = loss + terms["caan"]
    return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}


@torch.no_grad()
def predict(model: LEANet, x: torch.Tensor, m: torch.Tensor, batch_size: int = 64,
            channels_last: bool = True) -> np.ndarray:
    """The ADN's anomaly probability per image (N,)."""
    model.eval()
    device = next(model.parameters()).device
    out = [torch.sigmoid(model(_layout(x[i:i + batch_size].to(device), channels_last),
                               _layout(m[i:i + batch_size].to(device), channels_last))[0]).float().cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, x: torch.Tensor, m: torch.Tensor, batch_size: int = 16,
                         channels_last: bool = True) -> nn.Module:
    """Set every batch norm's running mean and variance to their average over the training
    images (N, 3, S, S) and maps (N, 1, S, S) under the final weights: one pass in batches of
    about ``batch_size``, nothing else in training mode, no labels used.

    The running averages (momentum 0.1; MobileNet's 0.01) start at mean 0, variance 1 and
    trail the weights: after a few dozen steps they still carry a few per cent of that start
    (0.9^40 = 0.015), which outweighs a layer's true variance when it is small (the stem's,
    on smooth images: 0.005), and the eval-mode model then says "normal" for every image
    while its training loss is near 0. At the paper's 2,000 steps both agree."""
    norms = [mod for mod in model.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(x) < 2:
        return model
    device = next(model.parameters()).device
    was_training, momenta = model.training, [mod.momentum for mod in norms]
    model.eval()
    for mod in norms:
        mod.reset_running_stats()
        mod.momentum = None            # a cumulative average over the pass
        mod.train()
    for part in np.array_split(np.arange(len(x)), max(1, len(x) // batch_size)):
        model(_layout(x[part].to(device), channels_last), _layout(m[part].to(device), channels_last))
    for mod, momentum in zip(norms, momenta):
        mod.momentum = momentum
    model.train(was_training)
    return model


def classification_metrics(labels: Sequence[int], probability: Sequence[float],
                           threshold: float = 0.5) -> dict[str, float]:
    """F1 of the anomalous class (label 1) when ``probability >= threshold`` (the book's one
    convention, :mod:`adlib.analysis.metrics`), accuracy, and the threshold-free image AUROC, all in %
    like every other chapter's metrics."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probability, dtype=float)
    auroc = image_auroc(p, y) if len(set(y.tolist())) == 2 else math.nan
    return {"f1": 100 * f1_at_threshold(p, y, threshold) if y.any() else 0.0,
            "accuracy": 100 * float(((p >= threshold).astype(int) == y).mean()),
            "image_auroc": 100 * float(auroc)}


def best_threshold(labels: Sequence[int], scores: Sequence[float], centre: bool = False) -> float:
    """The threshold on ``scores`` with the highest F1 on these (training) labels
    (:func:`adlib.analysis.metrics.f1_max`: anomalous when ``score >= threshold``; the highest of tied
    thresholds, which is an anomalous image's score). ``centre``: for probabilities, the middle
    (in logits) of the gap between that threshold and the next lower training score, the
    widest margin among thresholds of the same training F1: a classifier's training images are
    separated by a wide gap, and its lower edge, the least anomalous training image, is too
    strict for test images."""
    y, s = np.asarray(labels).astype(int), np.asarray(scores, dtype=float)
    if not y.any():
        return math.inf
    threshold = f1_max(s, y)[1]
    below = s[s < threshold]
    if not centre or not below.size:
        return threshold
    logit = np.log(np.clip([below.max(), threshold], 1e-7, 1 - 1e-7))
    logit -= np.log1p(-np.clip([below.max(), threshold], 1e-7, 1 - 1e-7))
    return float(1 / (1 + np.exp(-logit.mean())))


def train_lea_net(model: LEANet, x: torch.Tensor, m: torch.Tensor, y: torch.Tensor, *, epochs: int,
                  lr: float, batch_size: int = 16, seed: int = 0, device: str = "auto", amp: bool = True,
                  progress: bool | str = False, checkpoint_dir=None, bn_stats: str = "recomputed",
                  channels_last: bool = True):
    """Adam on Eq. 1 for ``epochs`` epochs (last epoch's weights); returns the FitResult.

    ``bn_stats``: ``"recomputed"`` (:func:`recompute_batch_norm` on the training images after
    the last epoch) or ``"running"`` (the running averages as training left them: PyTorch's and
    Keras's default). ``channels_last``: the memory layout (faster; the same computation)."""
    if bn_stats not in BN_STATS:
        msg = f"bn_stats={bn_stats!r}; expected one of {BN_STATS}"
        raise ValueError(msg)

    data = TensorDataset(x, m, y.float())
    started = time.perf_counter()
    result = fit(model, lea_loss, data, epochs=epochs, optimizer="adam", lr=lr, batch_size=batch_size,
                 device=device, seed=seed, amp=amp, progress=progress, desc="LEA-Net",
                 checkpoint_dir=checkpoint_dir, channels_last=channels_last)
    if bn_stats == "recomputed":
        recompute_batch_norm(result.model, x, m, batch_size, channels_last)
    result.train_seconds = time.perf_counter() - started
    return result


def count_parameters(model: nn.Module) -> int:
    return count(model)


__all__ = ["ADNS", "CAANS", "INPUTS", "POINTS", "rgb_to_lab", "delta_e00", "fancy_pca",
           "UNetColouriser", "train_colouriser", "recolour", "colour_anomaly_maps", "ResNet18",
           "VGG16", "BasicCNN", "ResNetCAAN", "MobileNetCAAN", "make_adn", "external_attention",
           "LEANet", "lea_loss", "predict", "classification_metrics", "best_threshold",
           "recompute_batch_norm", "train_lea_net", "count_parameters", "ResNet50", "VGG19",
           "BN_STATS"]


# ------------------------------------------------------------------ the colour map as a detector

@dataclass
class ColourMapConfig:
    """The colour map's knobs, named as the chapter's settings name them."""

    image_size: int = 128
    colouriser_width: int = 64
    colouriser_epochs: int = 500
    colouriser_lr: float = 1e-3
    fancy_pca: float = 0.08
    amp: bool = True
    seed: int = 0


def _images(dataset) -> torch.Tensor:
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))]).float()


class ColourMapDetector(Detector):
    """LEA-Net's colour anomaly map on its own, as an unsupervised detector (chapter 6 ranks it).

    ``fit``: :func:`train_colouriser` on the category's (normal) training images, with the
    chapter's colouriser settings (as its ``fold_colouriser`` passes them);
    ``colouriser_epochs = 0`` keeps the initial weights train_colouriser starts from (the
    untrained reference). ``predict``: :func:`recolour`'s CIEDE2000 map ``(N, S, S)`` as the
    pixel map, undivided (the chapter divides each map by its own maximum, which would make
    every image's maximum 1), and its maximum as the image score.
    """

    config_class = ColourMapConfig
    name = "LEA colour map"
    fit_call = "fit(train_set)"

    def fit(self, train) -> ColourMapDetector:
        c = self.config
        if c.colouriser_epochs == 0:
            with torch.random.fork_rng():
                torch.manual_seed(c.seed)
                self.model = UNetColouriser(c.image_size, c.colouriser_width)
            return self._untrained()
        start = time.perf_counter()
        fitted = train_colouriser(_images(train), image_size=c.image_size,
                                  width=c.colouriser_width, epochs=c.colouriser_epochs,
                                  lr=c.colouriser_lr, alpha_std=c.fancy_pca, seed=c.seed,
                                  device=self.device, amp=c.amp, progress=self.progress)
        self.train_seconds = time.perf_counter() - start
        self.model, self.history = fitted.model.eval(), fitted.history
        return self

    def set_epochs(self, epochs: int, checkpoint_dir: str) -> None:
        self.config.colouriser_epochs, self.checkpoint_dir = epochs, checkpoint_dir

    def predict(self, test) -> tuple[np.ndarray, np.ndarray]:
        self._require_fitted()
        maps = recolour(self.model, _images(test))["delta_e"].astype(np.float32)
        return image_scores(maps), maps
