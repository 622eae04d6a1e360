"""LEA-Net (adlib/models/lea_net.py, adlib/studies/lea_net.py): CIEDE2000 against Sharma's
published pairs, Lab conversion, the attention's behaviour, folds, the colour map, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from adlib.models import lea_net as lea
from adlib.studies import lea_net as study

# Sharma, Wu & Dalal (2005), Table 1: (L1, a1, b1), (L2, a2, b2), Delta E00.
SHARMA = [
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 3.1571, -77.2803), (50.0, 0.0, -82.7485), 2.8615),
    ((50.0, 2.8361, -74.0200), (50.0, 0.0, -82.7485), 3.4412),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((50.0, 2.5, 0.0), (61.0, -5.0, 29.0), 22.8977),
    ((50.0, 2.5, 0.0), (56.0, -27.0, -3.0), 31.9030),
    ((50.0, 2.5, 0.0), (58.0, 24.0, 15.0), 19.4535),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((63.0109, -31.0961, -5.8663), (62.8187, -29.7946, -4.0864), 1.2630),
]


def test_ciede2000_matches_sharmas_published_pairs():
    lab1 = np.array([p[0] for p in SHARMA])
    lab2 = np.array([p[1] for p in SHARMA])
    expected = np.array([p[2] for p in SHARMA])
    np.testing.assert_allclose(lea.delta_e00(lab1, lab2), expected, atol=1e-4)
    np.testing.assert_allclose(lea.delta_e00(lab2, lab1), expected, atol=1e-4)  # symmetric


def test_torch_lab_matches_scikit_image():
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = lea.rgb_to_lab(rgb).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, rgb2lab(rgb.permute(0, 2, 3, 1).numpy(), channel_axis=-1), atol=2e-3)


def test_attention_scales_uniformly_without_information_and_amplifies_where_high():
    f = torch.randn(2, 4, 8, 8)
    flat = torch.zeros(2, 6, 8, 8)                    # a CAAN feature carrying no information
    # sigmoid(0) = 0.5: the paper's f + f * M multiplies every feature by 1.5, the pattern unchanged
    torch.testing.assert_close(lea.external_attention(f, flat), 1.5 * f)
    # the official code's learned scalar starts at 0: the ADN starts as if there were no CAAN
    torch.testing.assert_close(lea.external_attention(f, flat, torch.zeros(1)), f)
    g = torch.full((2, 6, 8, 8), -6.0)
    g[..., 2:4, 2:4] = 6.0                           # high inside one square, low elsewhere
    out = lea.external_attention(f, g)
    gain = out / f
    assert torch.all(gain[..., 2:4, 2:4] > 1.99) and torch.all(gain[..., :2, :] < 1.01)
    # a coarser CAAN grid is resized to the ADN's
    assert lea.external_attention(f, torch.zeros(2, 6, 4, 4)).shape == f.shape


@pytest.mark.parametrize("adn", lea.ADNS)
@pytest.mark.parametrize("caan", lea.CAANS)
def test_every_adn_and_caan_trains_at_every_point(adn, caan):
    x, m = torch.rand(4, 3, 64, 64), torch.rand(4, 1, 64, 64)
    y = torch.tensor([0, 1, 0, 1])
    for point in (1, 5) if caan != "none" else (1,):
        net = lea.LEANet(adn, caan, point, width=8, image_size=64)
        out = lea.lea_loss(net, (x, m, y))
        out["loss"].backward()
        assert out["loss"].isfinite() and ("caan" in out) == (caan in ("resnet", "mobilenet"))
        grads = [p.grad for p in net.adn.parameters() if p.grad is not None]
        assert grads and all(g.isfinite().all() for g in grads)
        if net.caan is not None:   # the CAAN learns through the attention and its own BCE
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.caan.parameters())


def test_baseline_inputs_and_paper_parameter_counts():
    x, m = torch.rand(2, 3, 64, 64), torch.rand(2, 1, 64, 64)
    for kind in lea.INPUTS:
        logit, caan = lea.LEANet("basic_cnn", "none", input=kind, width=8, image_size=64)(x, m)
        assert logit.shape == (2,) and caan is None
    # the paper's widths give its Table 3 / 7 parameter counts (11.2 M, 165.7 M, 4.0 M, 16.1 M)
    counts = {adn: lea.count_parameters(lea.make_adn(adn, 3, 64, 256)) for adn in lea.ADNS}
    assert round(counts["resnet18"] / 1e6, 1) == 11.2 and round(counts["vgg16"] / 1e6, 1) == 165.7
    assert round(counts["basic_cnn"] / 1e6, 1) == 3.9
    assert round(lea.count_parameters(lea.LEANet("resnet18", "resnet")) / 1e6, 1) == 16.1


def test_stratified_folds_keep_the_class_ratio_and_repeat_from_the_seed():
    labels = np.array([0] * 88 + [1] * 60)
    tests = [study.fold_split(labels, 5, 3, k)[1] for k in range(5)]
    assert sorted(np.concatenate(tests).tolist()) == list(range(148))      # a partition
    for test in tests:
        assert abs(labels[test].mean() - 60 / 148) < 0.02
    again = [study.fold_split(labels, 5, 3, k)[1] for k in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(tests, again))
    assert not np.array_equal(tests[0], study.fold_split(labels, 5, 4, 0)[1])
    train, test = study.fold_split(labels, 5, 3, 0, fraction=0.25)
    assert np.array_equal(test, tests[0]) and labels[train].sum() == 12    # 25 % of 48 anomalies


def test_colour_map_separates_a_hue_stained_image_from_its_clean_twin():
    from adlib.data.embedded import synthesise

    def tensor(a):
        return torch.from_numpy(a[::4, ::4].copy()).permute(2, 0, 1).float() / 255

    normals = torch.stack([tensor(synthesise("ihc", "good", i, 0, "train")[1]) for i in range(24)])
    fitted = lea.train_colouriser(normals, image_size=64, width=8, epochs=40, seed=0, device="cpu")
    pairs = [synthesise("ihc", "hue_stain", i, 0) for i in (1, 3, 5, 7)]   # obvious stains
    clean = torch.stack([tensor(p[0]) for p in pairs])
    stained = torch.stack([tensor(p[1]) for p in pairs])
    out_clean, out_stained = lea.recolour(fitted.model, clean), lea.recolour(fitted.model, stained)
    masks = np.stack([p[2][::4, ::4] for p in pairs])
    # where the stain is, the colour error of the stained image is well above its clean twin's
    inside = [(s[m].mean(), c[m].mean()) for s, c, m in zip(out_stained["delta_e"], out_clean["delta_e"], masks)]
    # (ratios 1.38-2.9 across runs: colouriser training differs slightly from run to run)
    ratios = [s / c for s, c in inside]
    assert min(ratios) > 1.2 and np.mean(ratios) > 1.4, inside
    assert out_stained["max_delta_e"].mean() > out_clean["max_delta_e"].mean()
    maps = lea.colour_anomaly_maps(fitted.model, stained)[0]
    assert maps.shape == (4, 1, 64, 64) and float(maps.amax()) == pytest.approx(1.0)


def test_labelled_categories_and_a_clear_error_for_a_bad_root(tmp_path):
    from adlib.data.errors import DataError
    from adlib.data.sources import labelled_root, list_dataset_categories

    (tmp_path / "leaf" / "normal").mkdir(parents=True)
    (tmp_path / "leaf" / "anomalous").mkdir()
    (tmp_path / "other").mkdir()
    assert list_dataset_categories("labelled", tmp_path) == ["leaf"]
    assert labelled_root("embedded", tmp_path / "mvtec") == tmp_path / "labelled"
    with pytest.raises(DataError, match="does not exist"):
        list_dataset_categories("labelled", tmp_path / "missing")
    with pytest.raises(DataError, match="labelled"):
        labelled_root("mvtec_ad", tmp_path)


def test_a_short_run_learns_and_is_measured_against_both_sanity_references(tmp_path, monkeypatch):
    """The cpu protocol on 2 folds of the embedded ihc category: LEA-Net beats answering
    "anomalous" for every image and its untrained self; the threshold on the map's raw maximum
    (the other reference) is scored on the same folds, and beats "always anomalous" itself."""
    from adlib.data.sources import resolve_root
    from adlib.profiles import resolve

    monkeypatch.setenv("ADLIB_CACHE", str(tmp_path))
    s = study.protocol(resolve("lea_net", "cpu"))
    images, labels = study.load_labelled("embedded", resolve_root("embedded"), "ihc", s["image_size"])
    f1 = {"model": [], "always": [], "map": []}
    auroc = {"model": [], "untrained": []}
    for fold in range(s["folds"]):
        maps, peak, _ = study.fold_maps(images, labels, s, 0, fold, tag="ihc")
        for name, settings in (("model", s), ("always", {**s, "model": "always_anomalous"}),
                               ("map", {**s, "model": "map_max"})):
            out = study.train_fold(settings, images, labels, maps, peak, 0, fold)
            f1[name].append(out["metrics"]["f1"])
            if name == "model":
                auroc["model"].append(out["metrics"]["image_auroc"])
        torch.manual_seed(0)
        untrained = lea.LEANet(s["adn"], s["caan"], s["point"], width=s["width"], image_size=s["image_size"])
        test = out["test"]
        probability = lea.predict(untrained, images[test], maps[test])
        auroc["untrained"].append(lea.classification_metrics(labels[test], probability)["image_auroc"])
    mean = {k: float(np.mean(v)) for k, v in f1.items()}
    assert mean["always"] == pytest.approx(2 * 0.405 / 1.405, abs=0.01)   # 2p / (1 + p), p = 60/148
    assert mean["model"] > mean["always"] + 0.03, mean
    assert np.mean(auroc["model"]) > np.mean(auroc["untrained"]) + 0.15, auroc
    assert mean["map"] > mean["always"], mean
