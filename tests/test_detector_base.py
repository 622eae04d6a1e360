"""The skeleton every detector shares (adlib.training.detector): unknown options, the untrained
reference, the not-fitted guard, one meaning of ``parameter_count``, image scores and the
factory that builds a detector from a cell's settings. Tiny models, random backbone, no
training: seconds."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch

from adlib.training.detector import Detector, detector_from_settings, image_scores
from adlib.chapters.maae.model import MAAEDetector
from adlib.chapters.noise_to_norm.model import NoiseToNormDetector
from adlib.chapters.cse_patch_svdd.model import PatchSVDD
from adlib.chapters.rlr.model import RLRDetector

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
def test_predict_before_fit_is_a_runtime_error_naming_the_fix(cache, name):
    with pytest.raises(RuntimeError, match="not trained: call fit\\(train_set\\)"):
        ALL[name](cache).predict(_train_set(name))


@pytest.mark.parametrize("name", ALL)
def test_epochs_0_keeps_the_seeded_initial_model_with_an_empty_history(cache, name):
    det = ALL[name](cache, epochs=0, seed=3).fit(_train_set(name))
    again = ALL[name](cache, epochs=0, seed=3).fit(_train_set(name))
    assert det.history.empty and list(det.history.columns) == ["epoch", "train_loss"]
    assert not _model(det).training and getattr(det, "train_seconds", 0.0) == 0.0
    for (key, a), b in zip(_model(det).state_dict().items(), _model(again).state_dict().values()):
        assert torch.equal(a, b), key
    scores, maps = det.predict(_train_set(name))
    assert scores.shape == (len(IMAGES),) and maps.shape[0] == len(IMAGES)
    assert np.array_equal(scores, maps.reshape(len(maps), -1).max(1)), "image score = max of the map"


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


def test_the_factory_takes_the_config_fields_of_the_settings_and_names_the_folder():
    from adlib.study.spec import run_key

    settings = {"dataset": "embedded", "image_size": 64, "lam": 0.2, "width": 4, "epochs": 0,
                "seed": 9}
    det = detector_from_settings(NoiseToNormDetector, settings, seed=3, device="cpu",
                                 progress=False, checkpoint_root="/ck", paper="noise_to_norm",
                                 category="brick")
    assert (det.config.lam, det.config.width, det.config.epochs, det.config.seed) == (0.2, 4, 0, 3)
    assert det.checkpoint_dir == f"/ck/{run_key('noise_to_norm', settings, 3, 'brick')}"
    assert detector_from_settings(NoiseToNormDetector, settings, seed=3, device="cpu").checkpoint_dir is None
    with pytest.raises(ValueError, match="pass paper="):
        detector_from_settings(NoiseToNormDetector, settings, seed=3, device="cpu", checkpoint_root="/ck")


def test_the_factory_gives_patch_svdd_its_checkpoint_root_and_parsed_sizes():
    settings = {"attention": "se", "lbr": False, "attention_layers": 4, "reduction": 8,
                "train_noise_var": 0.0, "lam": 1e-3, "epochs": 0, "batch_size": 4, "lr": 1e-4,
                "samples_per_image": 1, "patch_sizes": "64,32", "stride32": 8, "stride64": 16}
    model = detector_from_settings(PatchSVDD, settings, seed=2, device="cpu", checkpoint_root="/ck")
    assert (model.attention, model.lbr, model.attention_layers, model.seed) == ("se", False, 4, 2)
    assert model.patch_sizes == (64, 32) and model.strides == {64: 16, 32: 8}
    assert model.checkpoint_root == "/ck" and model.checkpoint_dir is None
