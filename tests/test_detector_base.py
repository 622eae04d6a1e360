"""The skeleton every detector shares (adlib.training.detector): unknown options, the untrained
reference, the not-fitted guard, one meaning of ``parameter_count``, image scores and the
factory that builds a detector from a cell's settings. Tiny models, random backbone, no
training: seconds."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch

from adlib.chapters.cse_patch_svdd.model import PatchSVDD
from adlib.chapters.maae.model import MAAEDetector
from adlib.chapters.noise_to_norm.model import NoiseToNormDetector
from adlib.chapters.profiles import resolve
from adlib.chapters.registry import chapters
from adlib.chapters.rlr.model import RLRDetector
from adlib.study.load import load_study
from adlib.training.detector import Detector, detector_from_settings, image_scores

IMAGES = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
RUN = {"device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def cache():
    from adlib.training.features import FeatureCache

    return FeatureCache(stages=(0, 1, 2, 3), image_size=64, device="cpu", pretrained=False,
                        show_progress=False)


def _maae(cache, **kw):
    return MAAEDetector(cache, hidden=16, layers=3, heads=2, neighbour=3, batch_size=4, **RUN, **kw)


def _rlr(cache, **kw):
    return RLRDetector(cache, stages=(2, 3), hidden=(8, 16, 32), windows=(5, 3, 3), blocks=1,
                       heads=4, batch_size=4, **RUN, **kw)


def _noise_to_norm(cache, **kw):
    return NoiseToNormDetector(width=4, batch_size=4, **RUN, **kw)


def _patch_svdd(cache, **kw):
    return PatchSVDD(patch_sizes=(32,), strides={32: 16}, batch_size=4, samples_per_image=1,
                     **RUN, **kw)


DETECTORS = {"maae": _maae, "rlr": _rlr, "noise_to_norm": _noise_to_norm}
ALL = {**DETECTORS, "patch_svdd": _patch_svdd}


def _train_set(name):
    """Images as a tensor; Patch SVDD reads items ``{"image": ...}``."""
    return [{"image": image} for image in IMAGES] if name == "patch_svdd" else IMAGES


def _model(det):
    return det.net if isinstance(det, PatchSVDD) else det.model


@pytest.mark.parametrize("name", DETECTORS)
def test_an_unknown_option_is_a_type_error_listing_every_option(cache, name):
    make = DETECTORS[name]
    with pytest.raises(TypeError, match="unknown .* options \\['epoch'\\]") as error:
        make(cache, epoch=3)
    assert all(f"'{f.name}'" in str(error.value) for f in fields(make(cache).config_class))


@pytest.mark.parametrize("name", ALL)
def test_parameter_count_is_the_trainable_parameters_of_the_fitted_model(cache, name):
    det = ALL[name](cache, epochs=0)
    if isinstance(det, Detector):
        assert det.parameter_count == 0, "no model before fit"
    det.fit(_train_set(name))
    trainable = sum(p.numel() for p in _model(det).parameters() if p.requires_grad)
    assert det.parameter_count == trainable > 0
    if name == "maae":  # FFM's fixed box-average convolutions are not counted
        assert det.parameter_count < sum(p.numel() for p in det.model.parameters())


def test_image_scores_are_the_maximum_of_each_map_for_tensors_and_arrays():
    maps = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(1))
    expected = np.array([m.max().item() for m in maps], dtype=np.float32)
    assert np.array_equal(image_scores(maps), expected)
    assert np.array_equal(image_scores(maps.numpy()), expected)


def test_the_factory_takes_the_config_fields_of_the_settings_and_the_folder_by_row_key():
    from adlib.study.spec import checkpoint_dir, run_key

    settings = {"dataset": "embedded", "image_size": 64, "lam": 0.2, "width": 4, "epochs": 0,
                "seed": 9}
    det = detector_from_settings(NoiseToNormDetector, settings, seed=3, device="cpu",
                                 progress=False,
                                 checkpoint_dir=checkpoint_dir("/ck", "noise_to_norm", settings, 3,
                                                               "brick"))
    assert (det.config.lam, det.config.width, det.config.epochs, det.config.seed) == (0.2, 4, 0, 3)
    assert det.checkpoint_dir == f"/ck/{run_key('noise_to_norm', settings, 3, 'brick')}"
    assert detector_from_settings(NoiseToNormDetector, settings, seed=3, device="cpu").checkpoint_dir is None
    assert checkpoint_dir(None, "noise_to_norm", settings, 3) is None


def test_a_chapter_factory_names_the_checkpoint_folder_by_the_row_key():
    from adlib.chapters.noise_to_norm.study import detector
    from adlib.study.spec import run_key

    settings = {"model": "mnet", "dataset": "embedded", "image_size": 64, "lam": 0.2, "width": 4,
                "epochs": 0}
    det = detector(settings, seed=3, device="cpu", progress=False, checkpoint_root="/ck",
                   category="brick")
    assert det.checkpoint_dir == f"/ck/{run_key('noise_to_norm', settings, 3, 'brick')}"


def test_the_factory_gives_patch_svdd_its_checkpoint_root_and_parsed_sizes():
    settings = {"attention": "se", "lbr": False, "attention_layers": 4, "reduction": 8,
                "train_noise_var": 0.0, "lam": 1e-3, "epochs": 0, "batch_size": 4, "lr": 1e-4,
                "samples_per_image": 1, "patch_sizes": "64,32", "stride32": 8, "stride64": 16}
    model = detector_from_settings(PatchSVDD, settings, seed=2, device="cpu", checkpoint_root="/ck")
    model.set_epochs(5, "/ck/resume")
    assert (model.epochs, model.checkpoint_dir) == (5, "/ck/resume")
    assert (model.attention, model.lbr, model.attention_layers, model.seed) == ("se", False, 4, 2)
    assert model.patch_sizes == (64, 32) and model.strides == {64: 16, 32: 8}
    assert model.checkpoint_root == "/ck"


# ------------------------------------------------------------- every registered detector

def _registered() -> list[tuple[str, str, dict]]:
    """(chapter, config, settings) of one smoke cell per detector class of every registered
    study with a detector factory: an untrained cell where the grid has one (no training, so
    the skeleton is tested in seconds). A new chapter joins without an edit here."""
    out, seen = [], set()
    for chapter in chapters():
        study = load_study(chapter.key) if chapter.study else None
        if study is None or study.detector is None:
            continue
        protocol = study.protocol(resolve(chapter.key, "smoke"))
        cells = [(c, study.cell_settings(protocol, c)) for c in study.grid("smoke")]
        cells.sort(key=lambda cs: not _untrained(cs[1]))
        for cell, settings in cells:
            kind = type(study.detector(settings, seed=0, device="cpu", progress=False)).__name__
            if (chapter.key, kind) not in seen:
                seen.add((chapter.key, kind))
                out.append((chapter.key, cell.config, settings))
    return out


def _untrained(settings) -> bool:
    return settings.get("epochs") == 0 or settings.get("colouriser_epochs") == 0


REGISTERED = _registered()
IDS = [f"{key}/{config}" for key, config, _ in REGISTERED]


@pytest.fixture(scope="module")
def splits():
    """A few training and test images of one embedded category, per image size."""
    from torch.utils.data import Subset

    from adlib.data.sources import open_split, resolve_root

    root, out = resolve_root("embedded"), {}

    def get(size: int):
        if size not in out:
            out[size] = tuple(Subset(open_split("embedded", root, "brick", split, size), range(4))
                              for split in ("train", "test"))
        return out[size]

    return get


def _fresh(key: str, settings: dict, seed: int = 0):
    return load_study(key).detector(settings, seed=seed, device="cpu", progress=False)


def test_every_study_with_a_detector_is_in_the_skeleton_tests():
    keys = {key for key, _, _ in REGISTERED}
    assert {"cse_patch_svdd", "maae", "noise_to_norm", "rlr", "comparison"} <= keys
    kinds = {type(_fresh(k, s)).__name__ for k, _, s in REGISTERED}
    # chapter 6 brings chapter 0's kNN and LEA-Net's colour map in through its methods
    assert {"KNNBaseline", "ColourMapDetector", "PatchSVDD", "MAAEDetector", "RLRDetector",
            "NoiseToNormDetector", "MeanImageBaseline"} <= kinds


@pytest.mark.parametrize(("key", "config", "settings"), REGISTERED, ids=IDS)
def test_predict_before_fit_is_a_runtime_error_naming_the_fix(splits, key, config, settings):
    _, test = splits(settings["image_size"])
    with pytest.raises(RuntimeError, match="call fit\\("):
        _fresh(key, settings).predict(test)


@pytest.mark.parametrize(("key", "config", "settings"), REGISTERED, ids=IDS)
def test_a_fitted_detector_scores_each_image_by_the_maximum_of_its_map(splits, key, config,
                                                                         settings):
    train, test = splits(settings["image_size"])
    det = _fresh(key, settings)
    assert det.fit(train) is det
    scores, maps = det.predict(test)
    scores, maps = np.asarray(scores), np.asarray(maps)
    assert scores.shape == (len(test),) and maps.shape[0] == len(test) and maps.ndim == 3
    assert np.all(np.isfinite(scores)) and np.all(np.isfinite(maps))
    assert np.allclose(scores, maps.reshape(len(maps), -1).max(1)), "image score = max of the map"
    count = getattr(det, "parameter_count", 0)
    assert isinstance(count, int) and count >= 0


@pytest.mark.parametrize(("key", "config", "settings"),
                         [r for r in REGISTERED if _untrained(r[2])],
                         ids=[i for i, r in zip(IDS, REGISTERED) if _untrained(r[2])])
def test_the_untrained_reference_is_its_seeded_initial_model_with_an_empty_history(
        splits, key, config, settings):
    train, test = splits(settings["image_size"])
    first = _fresh(key, settings, seed=3).fit(train)
    again = _fresh(key, settings, seed=3).fit(train)
    assert first.history is not None and first.history.empty
    assert getattr(first, "train_seconds", 0.0) == 0.0
    assert np.array_equal(first.predict(test)[1], again.predict(test)[1]), "same seed, same model"
