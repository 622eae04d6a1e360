"""The embedded default: a small, real anomaly-detection data set made on the fly.

Every normal image comes from a real photograph that ships inside the scikit-image wheel
(no download), cropped, posed and lit differently each time; every anomaly is a synthetic
defect painted onto such an image, with a mask that marks exactly the pixels it changed.
The files follow the MVTec AD layout (so ``MVTecDataset(root / "mvtec", category)`` reads
them) and, for LEA-Net-style supervised use, the labelled-folder layout::

    <out>/mvtec/<category>/train/good/000.png ...
    <out>/mvtec/<category>/test/good/000.png ...
    <out>/mvtec/<category>/test/<defect_type>/000.png ...
    <out>/mvtec/<category>/ground_truth/<defect_type>/000_mask.png   (0 / 255)
    <out>/labelled/<category>/normal/{train,test}_000.png            (every good image)
    <out>/labelled/<category>/anomalous/<defect_type>_000.png        (every defective one, and
                                                                      more: see below)
    <out>/EMBEDDED.json                                              (version, seed, counts,
                                                                      each defect's severity)

How the defects are made (one rule for all of them): a defect painter returns the
defective image and a blending weight ``alpha`` in [0, 1]; weights below ``ALPHA_CUT``
(0.25) are set to zero, the image keeps its clean value wherever ``alpha == 0``, and the
mask is ``alpha > 0``. So a soft-edged stain is masked where its weight is at least 0.25
(its faint rim below that is not painted at all), a warp where pixels moved by half a
pixel or more, and no pixel outside the mask differs from the clean image (the camera
noise is one field added to both). Inside the mask a pixel may still round to its old
value where the change is below one grey level (e.g. a hue turn on a near-grey pixel).
:func:`synthesise` returns the clean twin with every image, so this can be checked.

Defect types (``DEFECT_INFO``; sizes and contrasts in ``DEFECT_RANGES``): scratch, hole,
stain (colour and a little darkening), deformed (a local swirl, textures), missing (a bite
out of a coin's rim showing the cloth; on the retina a patch whose vessels are smoothed
away), and, for the colour-only category, hue_stain and saturation_stain, which keep
CIELAB L* and change only a*b* (LEA-Net's case).

Severity: within each defect type, even indices are *subtle* (severity s in [0, 0.5)),
odd ones *obvious* (s in [0.5, 1]); sizes and contrasts grow linearly with s, and busy
categories (grass, gravel, ihc) scale defect sizes by their ``defect_scale``.
``EMBEDDED.json`` records s for every defective image.

Difficulty (tuned on generator ranges only, never per image): the kNN baseline
(``python -m adlib bench baseline``, EfficientNet-Lite0 patch features) reaches image
AUROC 0.71-0.92 at 128 px and 0.83-0.97 at 256 px on all categories except ihc at 256 px
(about 0.6): ImageNet features, trained with colour augmentation, are nearly blind to
hue-only changes, which is the gap LEA-Net's colour anomaly map is built for.

Labelled folders. Five-fold cross-validation needs about 10 anomalous images a fold, so the
labelled tree holds ``N_LABELLED_ANOMALOUS`` (60) defective images per category: the MVTec test
split's 24 and, continuing the same indices of each defect type (same seed rule, same severity
rule), images that only the labelled tree has.

Train and test never share pixels of a texture photo: texture crops for training come
from the top and bottom bands of the photo (rows 0-175 and 336-511), test crops from the
middle band (rows 176-335). Objects are posed anew for every image.

Determinism: image ``i`` of split/defect ``d`` of category ``c`` draws all its randomness
from ``np.random.default_rng([seed, c, split, d, i])``, so the same seed gives
byte-identical files (in any order, with any number of workers) and smaller sets are
prefixes of the full one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import skimage.data
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from skimage.color import lab2rgb, rgb2lab
from skimage.filters import threshold_otsu

from adlib.data.errors import DataError, see

GENERATOR_VERSION = 1
IMAGE_SIZE = 256
ALPHA_CUT = 0.25
N_TRAIN = 64
N_TEST_GOOD = 24
N_TEST_ANOMALOUS = 24
N_LABELLED_ANOMALOUS = 60
STAMP = "EMBEDDED.json"
MARKER = ".adlib-embedded"  # says "this generator wrote here" even while the stamp is away

_TEXTURE_DEFECTS = ("scratch", "hole", "stain", "deformed")
_OBJECT_DEFECTS = ("scratch", "hole", "stain", "missing")
_COLOUR_DEFECTS = ("hue_stain", "saturation_stain")

CATEGORY_INFO: dict[str, dict] = {
    "brick": {
        "kind": "texture",
        "source": "skimage.data.brick() (grey photo of a brick wall, 512x512)",
        "description": "brick wall crops, tinted brick red; train from the top/bottom bands, "
        "test from the middle band of the photo",
        "defects": _TEXTURE_DEFECTS,
    },
    "grass": {
        "kind": "texture",
        "source": "skimage.data.grass() (grey photo of a lawn, 512x512)",
        "description": "lawn crops, tinted green, any flip or quarter turn; train from the "
        "top/bottom bands, test from the middle band",
        "defect_scale": 1.5,
        "defects": _TEXTURE_DEFECTS,
    },
    "gravel": {
        "kind": "texture",
        "source": "skimage.data.gravel() (grey photo of gravel, 512x512)",
        "description": "gravel crops, warm grey, any flip or quarter turn; train from the "
        "top/bottom bands, test from the middle band",
        "defect_scale": 1.4,
        "defects": _TEXTURE_DEFECTS,
    },
    "coins": {
        "kind": "object_pose",
        "source": "skimage.data.coins() (grey photo of Greek coins)",
        "description": "the photo's three largest coins, cut out and laid at random positions "
        "and rotations on a dark cloth with soft shadows (like MPDD's tubes)",
        "defects": _OBJECT_DEFECTS,
    },
    "retina": {
        "kind": "object_aligned",
        "source": "skimage.data.retina() (colour fundus photo, 1411x1411)",
        "description": "the whole fundus, centred, with small shift/rotation/zoom jitter and "
        "left/right-eye mirroring",
        "defects": _OBJECT_DEFECTS,
    },
    "ihc": {
        "kind": "colour",
        "source": "skimage.data.immunohistochemistry() (IHC tissue stain, 512x512)",
        "description": "tissue crops; defects change only hue or saturation (CIELAB L* kept), "
        "LEA-Net's case; train from the top/bottom bands, test from the middle band",
        "defect_scale": 1.4,
        "defects": _COLOUR_DEFECTS,
    },
}
EMBEDDED_CATEGORIES: tuple[str, ...] = tuple(CATEGORY_INFO)

DEFECT_INFO: dict[str, str] = {
    "scratch": "a thin curve, dark on bright surfaces and bright on dark ones",
    "hole": "an irregular dark pit, darkest in its middle",
    "stain": "a soft-edged colour blotch (a*b* shift) with slight darkening",
    "deformed": "a local swirl: the texture inside a disc is twisted about its centre",
    "missing": "a piece gone: a bite out of a coin's rim, or a retina patch without vessels",
    "hue_stain": "hue turned inside a soft blob; CIELAB L* and chroma kept",
    "saturation_stain": "chroma faded or boosted inside a soft blob; CIELAB L* and hue kept",
}

# Texture bands (rows of the 512-px photo): train from the outer bands, test from the middle.
_TRAIN_BANDS = ((0, 176), (336, 512))
_TEST_BANDS = ((176, 336),)
_TINTS = {"brick": (1.0, 0.74, 0.60), "grass": (0.78, 1.0, 0.58), "gravel": (1.0, 0.97, 0.91)}

_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


# ----------------------------------------------------------------------------- sources
@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A scikit-image photo as float32 in [0, 1] (HxW or HxWx3), read from the wheel."""
    return np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0


@functools.lru_cache(maxsize=None)
def _retina_source() -> np.ndarray:
    """The fundus photo shrunk (Lanczos) so that the eye is ~250 px wide: 256x256x3."""
    img = Image.fromarray(_to_uint8(_photo("retina")))
    return np.asarray(img.resize((256, 256), Image.LANCZOS), dtype=np.float32) / 255.0


@functools.lru_cache(maxsize=None)
def _coin_sources() -> tuple[tuple[np.ndarray, np.ndarray, float], ...]:
    """The three largest coins of ``coins()``: (grey crop, alpha crop, radius) each."""
    grey = ndi.gaussian_filter(_photo("coins"), 1.0)
    # The photo's lighting falls off to the edges: threshold against the local background.
    local = grey - ndi.gaussian_filter(grey, 25)
    fg = ndi.binary_fill_holes(ndi.binary_opening(local > threshold_otsu(local) * 0.5, iterations=2))
    labels, n = ndi.label(fg)
    areas = ndi.sum(fg, labels, index=np.arange(1, n + 1))
    coins = []
    for lab in np.argsort(areas)[::-1][:3] + 1:
        sl = ndi.find_objects((labels == lab).astype(int))[0]
        r0, r1 = max(sl[0].start - 4, 0), sl[0].stop + 4
        c0, c1 = max(sl[1].start - 4, 0), sl[1].stop + 4
        mask = ndi.binary_fill_holes(labels[r0:r1, c0:c1] == lab)
        alpha = np.clip(ndi.gaussian_filter(mask.astype(np.float32), 0.7), 0, 1)
        radius = float(np.sqrt(mask.sum() / np.pi))
        coins.append((_photo("coins")[r0:r1, c0:c1].copy(), alpha, radius))
    return tuple(coins)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 with rounding (the one quantiser of this module)."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- scenes
@dataclass
class Scene:
    """A rendered normal image and what the defect painters need to know about it.

    image: HxWx3 float32 in [0, 1]; support: HxW in [0, 1], where defects may land;
    fill: HxWx3, what a 'missing' part reveals (the background); parts: object outlines
    [(row, col, radius, alpha HxW)] for objects; scale: the category's defect-size factor.
    """

    image: np.ndarray
    support: np.ndarray
    fill: np.ndarray | None = None
    parts: list = field(default_factory=list)
    scale: float = 1.0


def _sample(src: np.ndarray, centre, scale: float, angle: float, flip: bool = False,
            cval: float = 0.0, mode: str = "reflect") -> np.ndarray:
    """Bilinear resampling of ``src`` (HxW or HxWxC) into a 256x256 view.

    The output pixel (r, c) looks at ``centre + scale * R(angle) (r - 127.5, c - 127.5)``
    (columns mirrored first when ``flip``).
    """
    v = _YY - (IMAGE_SIZE - 1) / 2
    u = _XX - (IMAGE_SIZE - 1) / 2
    if flip:
        u = -u
    ca, sa = np.cos(angle) * scale, np.sin(angle) * scale
    rows = centre[0] + ca * v - sa * u
    cols = centre[1] + sa * v + ca * u
    if src.ndim == 2:
        return ndi.map_coordinates(src, [rows, cols], order=1, mode=mode, cval=cval)
    return np.stack([ndi.map_coordinates(src[..., k], [rows, cols], order=1, mode=mode, cval=cval)
                     for k in range(src.shape[-1])], axis=-1)


# Which mirror images of a crop are normal: brick walls have a vertical axis (mirror
# left-right only); lawn, gravel and tissue look alike in any of the 8 quarter-turns/flips.
_FLIPS = {"brick": "hflip", "grass": "dihedral", "gravel": "dihedral", "immunohistochemistry": "dihedral"}


def _band_crop(src: np.ndarray, rng: np.random.Generator, split: str, flips: str) -> np.ndarray:
    """A 256-px view of a 132-148-px rotated (+-4 deg) crop inside the split's bands."""
    bands = _TRAIN_BANDS if split == "train" else _TEST_BANDS
    r0, r1 = bands[rng.integers(len(bands))]
    side = rng.uniform(132, 148)
    angle = np.deg2rad(rng.uniform(-4, 4))
    half = side / 2 * (abs(np.cos(angle)) + abs(np.sin(angle)))
    # Rows r0 .. r1-1 belong to the band; bilinear taps stay inside it.
    centre = (rng.uniform(r0 + half, max(r1 - 1 - half, r0 + half)),
              rng.uniform(half, src.shape[1] - 1 - half))
    turn, flip = rng.integers(4), bool(rng.integers(2))  # drawn always: same stream
    if flips == "dihedral":
        angle += turn * np.pi / 2
    return _sample(src, centre, side / IMAGE_SIZE, angle, flip=flip and flips != "none")


def _render_texture(category: str, rng: np.random.Generator, split: str) -> Scene:
    grey = _band_crop(_photo(category), rng, split, _FLIPS[category])
    grey = ndi.gaussian_filter(grey, rng.uniform(0.0, 0.6))  # focus varies a little
    tint = np.asarray(_TINTS[category], np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    tint /= tint @ np.array([0.299, 0.587, 0.114], np.float32)  # keep the brightness
    image = np.clip(grey[..., None] * tint, 0, 1)
    return Scene(image, np.ones(grey.shape, np.float32), fill=None)


def _render_ihc(rng: np.random.Generator, split: str) -> Scene:
    name = "immunohistochemistry"
    image = np.clip(_band_crop(_photo(name), rng, split, _FLIPS[name]), 0, 1)
    # Colour defects land on stained tissue (where there is colour to change).
    chroma = np.hypot(*np.moveaxis(_lab(image)[..., 1:], -1, 0))
    support = ndi.uniform_filter(chroma, 15) > 12
    return Scene(image, support.astype(np.float32))


def _render_retina(rng: np.random.Generator) -> Scene:
    src = _retina_source()
    centre = (127.5 + rng.uniform(-6, 6), 127.5 + rng.uniform(-6, 6))
    image = _sample(src, centre, rng.uniform(0.96, 1.04), np.deg2rad(rng.uniform(-5, 5)),
                    flip=bool(rng.integers(2)), mode="constant")
    image = np.clip(image, 0, 1)
    disc = ndi.binary_erosion(image.max(-1) > 0.12, iterations=10)
    fill = np.stack([ndi.gaussian_filter(image[..., k], 5) for k in range(3)], -1)
    return Scene(image, disc.astype(np.float32), fill=fill)


def _place(rng: np.random.Generator, radii) -> list[tuple[float, float]]:
    """Non-overlapping centres for discs of the given radii inside the image."""
    for _ in range(1000):
        centres = []
        for r in radii:
            lo, hi = r + 6, IMAGE_SIZE - r - 6
            c = (rng.uniform(lo, hi), rng.uniform(lo, hi))
            if all(np.hypot(c[0] - p[0], c[1] - p[1]) > r + q + 8 for p, q in zip(centres, radii)):
                centres.append(c)
            else:
                break
        if len(centres) == len(radii):
            return centres
    msg = f"could not place discs of radii {radii} in {IMAGE_SIZE} px; expected them to fit"
    raise DataError(msg)


def _render_coins(rng: np.random.Generator) -> Scene:
    # Dark cloth: uneven light, a fine velvet grain, a warm grey tone.
    level = rng.uniform(0.13, 0.2)
    gy, gx = rng.uniform(-0.05, 0.05, 2)
    light = level + gy * (_YY / IMAGE_SIZE - 0.5) + gx * (_XX / IMAGE_SIZE - 0.5)
    light -= 0.06 * (((_YY - 128) ** 2 + (_XX - 128) ** 2) / 128**2)
    grain = ndi.gaussian_filter(rng.standard_normal((IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32), 0.8)
    cloth = np.clip(light + 0.02 * grain, 0, 1)

    coins = _coin_sources()
    scales = rng.uniform(1.55, 1.75, len(coins))
    radii = [c[2] * s for c, s in zip(coins, scales)]
    order = rng.permutation(len(coins))
    centres = _place(rng, [radii[i] for i in order])
    shadow = np.zeros_like(cloth)
    parts = []
    layers = []
    for i, centre in zip(order, centres):
        src, alpha_src, _ = coins[i]
        mid = ((src.shape[0] - 1) / 2, (src.shape[1] - 1) / 2)
        angle = rng.uniform(0, 2 * np.pi)
        # _sample looks at look_at + R(angle) (x - 127.5) / scale for output pixel x: choose
        # look_at so that the crop's middle lands on ``centre``.
        ca, sa = np.cos(angle), np.sin(angle)
        v, u = 127.5 - centre[0], 127.5 - centre[1]
        look_at = (mid[0] + (ca * v - sa * u) / scales[i], mid[1] + (sa * v + ca * u) / scales[i])
        coin = _sample(src, look_at, 1 / scales[i], angle, mode="nearest") * rng.uniform(0.9, 1.1)
        alpha = np.clip(_sample(alpha_src, look_at, 1 / scales[i], angle, mode="constant"), 0, 1)
        shadow = np.maximum(shadow, ndi.shift(ndi.gaussian_filter(alpha, 4), (3, 2), order=1))
        layers.append((coin, alpha))
        parts.append((centre[0], centre[1], radii[i], alpha))
    background = cloth * (1 - 0.5 * shadow)
    grey = background.copy()
    for coin, alpha in layers:
        grey = grey * (1 - alpha) + coin * alpha
    tone = np.array([1.0, 0.97, 0.9], np.float32) * rng.uniform(0.98, 1.02, 3).astype(np.float32)
    image = np.clip(grey[..., None] * tone, 0, 1)
    support = sum(p[3] for p in parts)
    return Scene(image, np.clip(support, 0, 1), fill=np.clip(background[..., None] * tone, 0, 1),
                 parts=parts)


def _render(category: str, rng: np.random.Generator, split: str) -> Scene:
    kind = CATEGORY_INFO[category]["kind"]
    if kind == "texture":
        scene = _render_texture(category, rng, split)
    elif category == "coins":
        scene = _render_coins(rng)
    elif category == "retina":
        scene = _render_retina(rng)
    else:
        scene = _render_ihc(rng, split)
    scene.scale = CATEGORY_INFO[category].get("defect_scale", 1.0)
    # Lighting: exposure, gamma and white balance differ a little from shot to shot.
    gain = rng.uniform(0.93, 1.07)
    gamma = np.exp(rng.uniform(-0.08, 0.08))
    balance = rng.uniform(0.97, 1.03, 3).astype(np.float32)
    scene.image = np.clip(scene.image ** gamma * gain * balance, 0, 1).astype(np.float32)
    if scene.fill is not None:
        scene.fill = np.clip(scene.fill ** gamma * gain * balance, 0, 1).astype(np.float32)
    return scene


# ----------------------------------------------------------------------------- defect shapes
def _lab(rgb: np.ndarray) -> np.ndarray:
    return rgb2lab(rgb).astype(np.float32)


def _rgb(lab: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # out-of-gamut colours are clipped, as intended
        warnings.simplefilter("ignore", UserWarning)
        return np.clip(lab2rgb(lab), 0, 1).astype(np.float32)


def _spot(rng: np.random.Generator, support: np.ndarray, margin: float) -> tuple[float, float]:
    """A random point where ``support`` is > 0.5, at least ``margin`` px from the border."""
    ok = support > 0.5
    m = min(max(int(np.ceil(margin)), 1), IMAGE_SIZE // 2 - 1)
    ok[:m] = ok[-m:] = False
    ok[:, :m] = ok[:, -m:] = False
    idx = np.flatnonzero(ok)
    if idx.size == 0:  # a big defect or a small support: relax the margin, then the support
        idx = np.flatnonzero(support > 0.5)
    if idx.size == 0:
        idx = np.arange(IMAGE_SIZE * IMAGE_SIZE)
    k = idx[rng.integers(idx.size)]
    return float(k // IMAGE_SIZE) + rng.uniform(-0.5, 0.5), float(k % IMAGE_SIZE) + rng.uniform(-0.5, 0.5)


def _blob(rng: np.random.Generator, centre, radius: float, softness: float, roughness: float = 0.2):
    """An irregular disc: weight 1 inside, ramping to 0 over ``softness`` * radius at its edge."""
    dy, dx = _YY - centre[0], _XX - centre[1]
    dist = np.hypot(dy, dx)
    phi = np.arctan2(dy, dx)
    k = np.arange(2, 7, dtype=np.float32)
    amp = rng.normal(0, roughness, k.size).astype(np.float32) / k
    phase = rng.uniform(0, 2 * np.pi, k.size).astype(np.float32)
    edge = radius * (1 + np.tensordot(np.cos(phi[..., None] * k + phase), amp, axes=([-1], [0])))
    ramp = max(softness * radius, 0.7)
    return np.clip((edge - dist) / ramp + 0.5 * (softness == 0), 0, 1).astype(np.float32)


def _scratch_alpha(rng: np.random.Generator, centre, length: float, width: float) -> np.ndarray:
    """An anti-aliased thin curve (a quadratic Bezier), drawn 4x larger and box-reduced."""
    theta = rng.uniform(0, np.pi)
    d = np.array([np.sin(theta), np.cos(theta)])
    n = np.array([-d[1], d[0]])
    c = np.asarray(centre)
    p0, p2 = c - d * length / 2, c + d * length / 2
    p1 = c + n * length * rng.uniform(-0.3, 0.3)
    t = np.linspace(0, 1, 64)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    canvas = Image.new("L", (IMAGE_SIZE * 4, IMAGE_SIZE * 4), 0)
    ImageDraw.Draw(canvas).line([(4 * q[1], 4 * q[0]) for q in pts], fill=255,
                                width=max(1, round(4 * width)), joint="curve")
    alpha = np.asarray(canvas.reduce(4), np.float32) / 255.0
    # Real scratches are uneven: the depth varies along the line.
    return alpha * (0.6 + 0.4 * _smooth_noise(rng, 8))


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1] on the image grid from a cells x cells random grid."""
    grid = rng.uniform(0, 1, (cells + 1, cells + 1)).astype(np.float32)
    scale = cells / (IMAGE_SIZE - 1)
    return ndi.map_coordinates(grid, [_YY * scale, _XX * scale], order=3, mode="nearest").clip(0, 1)


# ----------------------------------------------------------------------------- defects
#: Each defect parameter as (value at s = 0, value at s = 1); an image with severity s gets
#: lo + (hi - lo) * s, times a +-15 % jitter for sizes. Lengths in pixels of the 256-px image,
#: contrasts as fractions of the pixel value, colour in CIELAB units, angles in degrees.
DEFECT_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "scratch": {"length": (40, 220), "width": (1.5, 6.0), "contrast": (0.25, 0.75)},
    "hole": {"radius": (5, 32), "depth": (0.4, 0.9)},
    "stain": {"radius": (10, 45), "chroma": (8, 35), "darkening": (1, 8)},
    "deformed": {"radius": (16, 56), "twist": (0.8, 2.6)},
    "missing": {"radius": (6, 35)},
    "hue_stain": {"radius": (16, 56), "angle": (40, 170)},
    "saturation_stain": {"radius": (16, 56), "fade": (0.4, 0.0), "boost": (1.8, 3.0)},
}


def _param(defect: str, name: str, s: float) -> float:
    lo, hi = DEFECT_RANGES[defect][name]
    return lo + (hi - lo) * s


def _size(defect: str, name: str, s: float, rng: np.random.Generator) -> float:
    return _param(defect, name, s) * rng.uniform(0.85, 1.15)


# Each painter: (scene, rng, s) -> (defective HxWx3, alpha HxW); s in [0, 1] is the severity.
def _paint_scratch(scene: Scene, rng, s):
    length = _size("scratch", "length", s, rng) * scene.scale
    width = _param("scratch", "width", s) * scene.scale
    contrast = _size("scratch", "contrast", s, rng)
    centre = _spot(rng, scene.support, 0.2 * length + 4)
    alpha = _scratch_alpha(rng, centre, length, width) * (scene.support > 0.5)
    img = scene.image
    # A scratch exposes material that contrasts with its surroundings: dark on bright
    # surfaces, bright on dark ones.
    if np.sum(img.mean(-1) * alpha) < 0.45 * np.sum(alpha):
        painted = img + contrast * (1 - img)
    else:
        painted = img * (1 - contrast)
    return painted, alpha


def _paint_hole(scene: Scene, rng, s):
    radius = _size("hole", "radius", s, rng) * scene.scale
    depth = min(_size("hole", "depth", s, rng), 0.95)
    centre = _spot(rng, scene.support, radius + 3)
    alpha = _blob(rng, centre, radius, softness=0.0, roughness=0.3) * (scene.support > 0.5)
    # Darker towards the middle, like a pit in shadow.
    dist = np.hypot(_YY - centre[0], _XX - centre[1]) / max(radius, 1)
    shade = (1 - depth * (0.75 + 0.25 * np.clip(1 - dist, 0, 1)))[..., None]
    return scene.image * shade, alpha


def _paint_stain(scene: Scene, rng, s):
    radius = _size("stain", "radius", s, rng) * scene.scale
    centre = _spot(rng, scene.support, radius * 0.5)
    alpha = _blob(rng, centre, radius, softness=0.6, roughness=0.35) * np.clip(scene.support, 0, 1)
    hue = rng.uniform(0, 2 * np.pi)
    chroma = _param("stain", "chroma", s)
    shift = np.array([-_param("stain", "darkening", s), chroma * np.cos(hue), chroma * np.sin(hue)],
                     np.float32)
    return _rgb(_lab(scene.image) + alpha[..., None] * shift), alpha


def _paint_deformed(scene: Scene, rng, s):
    """A local swirl: pixels inside a disc are rotated about its centre by a falloff angle."""
    radius = _size("deformed", "radius", s, rng) * scene.scale
    twist = _param("deformed", "twist", s) * rng.choice([-1, 1])
    centre = _spot(rng, scene.support, radius + 2)
    dy, dx = _YY - centre[0], _XX - centre[1]
    dist = np.hypot(dy, dx)
    fall = np.clip(1 - (dist / radius) ** 2, 0, 1) ** 2
    a = twist * fall
    rows = centre[0] + np.cos(a) * dy - np.sin(a) * dx
    cols = centre[1] + np.sin(a) * dy + np.cos(a) * dx
    moved = np.hypot(rows - _YY, cols - _XX)
    warped = np.stack([ndi.map_coordinates(scene.image[..., k], [rows, cols], order=1, mode="reflect")
                       for k in range(3)], -1)
    # The mask: every pixel that moved by half a pixel or more (the rest stay untouched).
    return warped, (moved >= 0.5).astype(np.float32)


def _paint_missing(scene: Scene, rng, s):
    """A piece missing: a bite out of an object's rim (coins) or a patch smoothed away."""
    radius = _size("missing", "radius", s, rng) * scene.scale
    if scene.parts:
        row, col, r_obj, obj_alpha = scene.parts[rng.integers(len(scene.parts))]
        phi = rng.uniform(0, 2 * np.pi)
        depth = r_obj - radius * rng.uniform(0.2, 0.6)
        centre = (row + depth * np.sin(phi), col + depth * np.cos(phi))
        alpha = _blob(rng, centre, radius, softness=0.0, roughness=0.35) * obj_alpha
    else:
        centre = _spot(rng, scene.support, radius + 2)
        alpha = _blob(rng, centre, radius, softness=0.3, roughness=0.3) * (scene.support > 0.5)
    return scene.fill, alpha


def _paint_hue_stain(scene: Scene, rng, s):
    """Rotate hue (the a*b* angle) inside a soft blob; L* and chroma are kept."""
    radius = _size("hue_stain", "radius", s, rng) * scene.scale
    centre = _spot(rng, scene.support, radius * 0.5)
    alpha = _blob(rng, centre, radius, softness=0.5, roughness=0.35)
    angle = np.deg2rad(_param("hue_stain", "angle", s)) * rng.choice([-1, 1])
    lab = _lab(scene.image)
    t = alpha * angle
    a, b = lab[..., 1], lab[..., 2]
    lab = np.stack([lab[..., 0], np.cos(t) * a - np.sin(t) * b, np.sin(t) * a + np.cos(t) * b], -1)
    return _rgb(lab), alpha


def _paint_saturation_stain(scene: Scene, rng, s):
    """Scale chroma (the a*b* length) inside a soft blob: faded or over-saturated; L* kept."""
    radius = _size("saturation_stain", "radius", s, rng) * scene.scale
    centre = _spot(rng, scene.support, radius * 0.5)
    alpha = _blob(rng, centre, radius, softness=0.5, roughness=0.35)
    factor = _param("saturation_stain", "fade" if rng.integers(2) else "boost", s)
    lab = _lab(scene.image)
    lab[..., 1:] *= (1 + (factor - 1) * alpha)[..., None]
    return _rgb(lab), alpha


# Painters whose output already has alpha applied (warp; L*a*b* edits blended in Lab).
_ALPHA_INSIDE = ("deformed", "hue_stain", "saturation_stain", "stain")
_PAINTERS = {
    "scratch": _paint_scratch,
    "hole": _paint_hole,
    "stain": _paint_stain,
    "deformed": _paint_deformed,
    "missing": _paint_missing,
    "hue_stain": _paint_hue_stain,
    "saturation_stain": _paint_saturation_stain,
}


# ----------------------------------------------------------------------------- one item
def severity(index: int, rng: np.random.Generator) -> float:
    """Severity s of defect image ``index``: even -> subtle [0, 0.5), odd -> obvious [0.5, 1]."""
    return float(rng.uniform(0, 0.5) if index % 2 == 0 else rng.uniform(0.5, 1.0))


def synthesise(category: str, defect_type: str, index: int, seed: int = 0,
               split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One image of the embedded set, with its clean twin.

    Returns ``(clean, image, mask, s)``: clean and image are 256x256x3 uint8 (equal for
    ``defect_type == "good"``), mask is 256x256 bool (``image != clean`` only inside it),
    s the severity in [0, 1] (0 for good). ``split`` is "train" or "test" (train has only
    "good").
    """
    if category not in CATEGORY_INFO:
        msg = f"unknown embedded category {category!r}; expected one of {EMBEDDED_CATEGORIES}"
        raise DataError(msg)
    defects = CATEGORY_INFO[category]["defects"]
    if defect_type != "good" and (defect_type not in defects or split != "test"):
        msg = (f"no defect type {defect_type!r} in the {split} split of {category!r}; "
               f"expected 'good' or (test only) one of {defects}")
        raise DataError(msg)
    if split not in ("train", "test"):
        msg = f"split must be 'train' or 'test', got {split!r}"
        raise DataError(msg)
    if seed < 0 or index < 0:
        msg = f"seed and index must be >= 0, got seed={seed}, index={index}"
        raise DataError(msg)
    d = 0 if defect_type == "good" else 1 + defects.index(defect_type)
    rng = np.random.default_rng([seed, EMBEDDED_CATEGORIES.index(category),
                                 int(split == "test"), d, index])
    scene = _render(category, rng, split)
    clean = scene.image
    image, alpha, s = clean, np.zeros(clean.shape[:2], np.float32), 0.0
    if defect_type != "good":
        s = severity(index, rng)
        for _ in range(20):  # redraw if the defect fell outside the support entirely
            painted, alpha = _PAINTERS[defect_type](scene, rng, s)
            alpha = np.where(alpha >= ALPHA_CUT, alpha, 0.0).astype(np.float32)
            if defect_type in _ALPHA_INSIDE:
                blended = painted
            else:
                blended = clean * (1 - alpha[..., None]) + painted * alpha[..., None]
            image = np.where(alpha[..., None] > 0, blended, clean)
            if (alpha > 0).sum() >= 4:
                break
    noise = rng.normal(0, rng.uniform(0.003, 0.01), clean.shape).astype(np.float32)
    return _to_uint8(clean + noise), _to_uint8(image + noise), alpha > 0, s


# ----------------------------------------------------------------------------- writing
def _png(array: np.ndarray) -> bytes:
    """PNG bytes without timestamps or text chunks (byte-identical for equal arrays)."""
    buf = io.BytesIO()
    # Level 1: half the encoding time of the default, files ~5% larger.
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _link(src: Path, dst: Path) -> None:
    """The labelled tree holds the same files: a hard link where the file system allows."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _write_category(args) -> dict:
    """Write one category's MVTec and labelled trees under ``tmp``; return its record."""
    tmp, category, seed, n_train, n_test_good, n_per_defect, n_labelled_per_defect = args
    cat = Path(tmp) / "mvtec" / category
    lab = Path(tmp) / "labelled" / category
    for sub in (cat / "train" / "good", cat / "test" / "good", lab / "normal", lab / "anomalous"):
        sub.mkdir(parents=True, exist_ok=True)
    record = {"kind": CATEGORY_INFO[category]["kind"], "source": CATEGORY_INFO[category]["source"],
              "defect_scale": CATEGORY_INFO[category].get("defect_scale", 1.0), "train_good": n_train,
              "test_good": n_test_good, "defects": {}, "severity": {}, "labelled_severity": {}}
    for split, n in (("train", n_train), ("test", n_test_good)):
        for i in range(n):
            path = cat / split / "good" / f"{i:03d}.png"
            path.write_bytes(_png(synthesise(category, "good", i, seed, split)[1]))
            _link(path, lab / "normal" / f"{split}_{i:03d}.png")
    for defect in CATEGORY_INFO[category]["defects"]:
        (cat / "test" / defect).mkdir(parents=True, exist_ok=True)
        (cat / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_defect):
            _, image, mask, s = synthesise(category, defect, i, seed, "test")
            path = cat / "test" / defect / f"{i:03d}.png"
            path.write_bytes(_png(image))
            (cat / "ground_truth" / defect / f"{i:03d}_mask.png").write_bytes(
                _png(mask.astype(np.uint8) * 255))
            _link(path, lab / "anomalous" / f"{defect}_{i:03d}.png")
            record["severity"][f"{defect}/{i:03d}"] = round(s, 4)
        record["defects"][defect] = n_per_defect
        for i in range(n_per_defect, n_labelled_per_defect):  # the labelled tree's extra ones
            _, image, _, s = synthesise(category, defect, i, seed, "test")
            (lab / "anomalous" / f"{defect}_{i:03d}.png").write_bytes(_png(image))
            record["labelled_severity"][f"{defect}/{i:03d}"] = round(s, 4)
    record["labelled_anomalous"] = len(list((lab / "anomalous").iterdir()))
    return record


def generate_embedded(out_dir, seed: int = 0, *, categories=None, n_train: int | None = None,
                      n_test_good: int | None = None, n_test_anomalous: int | None = None,
                      n_labelled_anomalous: int | None = None, workers: int = 1) -> Path:
    """Write the embedded default data set (layout in the module docstring); return out_dir.

    categories: a subset of ``EMBEDDED_CATEGORIES`` (default all); n_train / n_test_good:
    good images per category; n_test_anomalous: defective test images per category, split
    evenly over its defect types; n_labelled_anomalous: defective images in the labelled tree
    (at least the test split's; defaults: N_TRAIN, N_TEST_GOOD, N_TEST_ANOMALOUS,
    N_LABELLED_ANOMALOUS, read at call time). ``workers`` > 1 writes categories in parallel (same bytes).
    The tree is built in a temporary sibling folder and moved into place; the stamp
    ``EMBEDDED.json`` is written last, so an interrupted run leaves no stamp.
    """
    out_dir = Path(out_dir).expanduser()
    n_train = N_TRAIN if n_train is None else n_train
    n_test_good = N_TEST_GOOD if n_test_good is None else n_test_good
    n_test_anomalous = N_TEST_ANOMALOUS if n_test_anomalous is None else n_test_anomalous
    n_labelled = N_LABELLED_ANOMALOUS if n_labelled_anomalous is None else n_labelled_anomalous
    n_labelled = max(n_labelled, n_test_anomalous)
    categories = tuple(categories or EMBEDDED_CATEGORIES)
    unknown = [c for c in categories if c not in CATEGORY_INFO]
    if unknown:
        msg = f"unknown embedded categories {unknown}; expected names from {EMBEDDED_CATEGORIES}"
        raise DataError(msg)
    ours = (out_dir / STAMP).exists() or (out_dir / MARKER).exists()
    if (out_dir / "mvtec").exists() and not ours:
        msg = (f"{out_dir / 'mvtec'} exists but {out_dir / STAMP} does not: it may be a real "
               f"data set, so it is not overwritten; choose an empty folder ({see('embedded')})")
        raise DataError(msg)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        jobs = [(str(tmp), c, seed, n_train, n_test_good,
                 -(-n_test_anomalous // len(CATEGORY_INFO[c]["defects"])),
                 -(-n_labelled // len(CATEGORY_INFO[c]["defects"]))) for c in categories]
        if workers > 1:
            with mp.get_context("spawn").Pool(workers) as pool:
                records = pool.map(_write_category, jobs)
        else:
            records = [_write_category(j) for j in jobs]
        stamp = {
            "generator": "adlib.data.embedded",
            "version": GENERATOR_VERSION,
            "seed": seed,
            "image_size": IMAGE_SIZE,
            "alpha_cut": ALPHA_CUT,
            "severity_rule": "even index subtle (s < 0.5), odd index obvious (s >= 0.5)",
            "defect_ranges": {d: {k: list(v) for k, v in r.items()} for d, r in DEFECT_RANGES.items()},
            "categories": dict(zip(categories, records)),
        }
        _install(tmp, out_dir)
        (out_dir / (STAMP + ".part")).write_text(json.dumps(stamp, indent=1, sort_keys=True))
        os.replace(out_dir / (STAMP + ".part"), out_dir / STAMP)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _install(tmp: Path, out_dir: Path) -> None:
    """Move tmp's trees into out_dir: the old stamp goes first, the new one comes last."""
    (tmp / MARKER).write_text("written by adlib.data.embedded\n")
    if not out_dir.exists():
        try:
            os.rename(tmp, out_dir)
            tmp.mkdir()  # so the caller's cleanup finds a folder
            return
        except OSError:
            pass  # someone created it meanwhile: swap the children instead
    shutil.copyfile(tmp / MARKER, out_dir / MARKER)
    (out_dir / STAMP).unlink(missing_ok=True)
    for name in ("mvtec", "labelled"):
        if (out_dir / name).exists():
            shutil.rmtree(out_dir / name)
        os.rename(tmp / name, out_dir / name)


def read_stamp(root) -> dict | None:
    """The parsed ``EMBEDDED.json`` under root, or None when missing or unreadable."""
    try:
        return json.loads((Path(root) / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _is_full_set(stamp: dict | None, seed: int) -> bool:
    """Whether a stamp describes the full default set of this generator version and seed."""
    if not stamp or stamp.get("version") != GENERATOR_VERSION or stamp.get("seed") != seed:
        return False
    cats = stamp.get("categories", {})
    if sorted(cats) != sorted(EMBEDDED_CATEGORIES):
        return False
    return all(r.get("train_good") == N_TRAIN and r.get("test_good") == N_TEST_GOOD
               and sum(r.get("defects", {}).values()) >= N_TEST_ANOMALOUS
               and r.get("labelled_anomalous", 0) >= N_LABELLED_ANOMALOUS for r in cats.values())


def ensure_embedded(root=None, seed: int = 0) -> Path:
    """The embedded set's root (holding ``mvtec/`` and ``labelled/``), generated if needed.

    root defaults to ``$ADLIB_EMBEDDED`` or ``~/.cache/adlib/embedded/seed<seed>``. The set
    is (re)generated when the stamp is missing or its version, seed or categories differ.
    """
    if root is None:
        env = os.environ.get("ADLIB_EMBEDDED")
        root = Path(env) if env else Path.home() / ".cache" / "adlib" / "embedded" / f"seed{seed}"
    root = Path(root).expanduser()
    if _is_full_set(read_stamp(root), seed):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(root.parent / f".{root.name}.lock"):
        if not _is_full_set(read_stamp(root), seed):  # another process may have made it
            generate_embedded(root, seed=seed)
    return root


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive advisory file lock (POSIX): parallel notebooks generate the set once, and
    parallel study workers train one colouriser per fold (chapter 4)."""
    with open(path, "a") as handle:
        try:
            import fcntl  # POSIX only: elsewhere the lock is skipped (see except)
        except ImportError:  # Windows: no lock, the temp-folder swap still keeps files whole
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tree_digest(root) -> str:
    """SHA-256 over every file's relative path and bytes under root (sorted)."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- contact sheet
def contact_sheet(root, out_png, n_good: int = 3) -> Path:
    """Draw every category: ``n_good`` train goods, a test good, and per defect type its
    first subtle and first obvious test image with the mask outlined in red (3 px outside
    the mask, so thin defects stay visible). Returns out_png.

    root: the folder that holds ``mvtec/`` (or the ``mvtec`` folder itself).
    """
    matplotlib.use("Agg", force=False)

    root = Path(root)
    stamp = read_stamp(root) or read_stamp(root.parent) or {}
    mvtec = root / "mvtec" if (root / "mvtec").is_dir() else root
    cats = sorted(p.name for p in mvtec.iterdir() if (p / "train" / "good").is_dir())
    cats = [c for c in EMBEDDED_CATEGORIES if c in cats] + [c for c in cats if c not in CATEGORY_INFO]
    if not cats:
        msg = f"no <category>/train/good under {mvtec}; expected the MVTec layout ({see('mvtec-ad')})"
        raise DataError(msg)
    rows = []
    for c in cats:
        defects = sorted(p.name for p in (mvtec / c / "test").iterdir() if p.name != "good")
        cells = [(mvtec / c / "train" / "good" / f"{i:03d}.png", None, f"train good {i}")
                 for i in range(n_good)]
        cells.append((mvtec / c / "test" / "good" / "000.png", None, "test good"))
        sev = stamp.get("categories", {}).get(c, {}).get("severity", {})
        for d in defects:
            for i, name in ((0, "subtle"), (1, "obvious")):
                s = sev.get(f"{d}/{i:03d}")
                label = f"{d} ({name}" + (f", s={s:.2f})" if s is not None else ")")
                cells.append((mvtec / c / "test" / d / f"{i:03d}.png",
                              mvtec / c / "ground_truth" / d / f"{i:03d}_mask.png", label))
        rows.append((c, cells))
    ncol = max(len(cells) for _, cells in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.55 * ncol, 1.75 * len(rows)), squeeze=False)
    for r, (c, cells) in enumerate(rows):
        for k in range(ncol):
            ax = axes[r, k]
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(cells) or not cells[k][0].exists():
                ax.axis("off")
                continue
            img_path, mask_path, label = cells[k]
            ax.imshow(np.asarray(Image.open(img_path)))
            if mask_path is not None and mask_path.exists():
                mask = np.asarray(Image.open(mask_path)) > 127
                if mask.any():  # outline 3 px outside the mask, so the defect stays visible
                    ring = ndi.binary_dilation(mask, iterations=3)
                    ax.contour(ring, levels=[0.5], colors="red", linewidths=0.6)
            ax.set_title(label, fontsize=6)
            if k == 0:
                kind = CATEGORY_INFO.get(c, {}).get("kind", "")
                ax.set_ylabel(f"{c}\n({kind})", fontsize=8)
    fig.suptitle("Embedded default: train goods, a test good, and each defect type "
                 "(subtle / obvious; red: mask outline, 3 px outside)", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
