"""Profiles: one place fills the defaults; an explicit parameter always wins."""

import json
from pathlib import Path

import pytest

from adlib.chapters.profiles import PROFILE_NAMES, profile_defaults, resolve


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_every_profile_fills_every_knob(profile):
    cfg = resolve("data_and_metrics", profile, data_root="/x" if profile == "paper" else None)
    assert cfg.profile == profile
    assert cfg.image_size > 0 and cfg.epochs > 0 and cfg.batch_size > 0
    assert cfg.seeds[0] == cfg.seed


def test_chapter_settings_are_the_ones_pinned_when_they_moved_into_the_chapters():
    """``profile_defaults.json`` holds every notebook's defaults as ``profiles.PAPER_DEFAULTS``
    gave them before each chapter's settings moved into its ``CHAPTER``; a deliberate change to
    a chapter's settings updates the pin with it."""
    pinned = json.loads((Path(__file__).parent / "profile_defaults.json").read_text())
    for name, expected in pinned.items():
        paper, profile = name.split("/")
        assert json.loads(json.dumps(profile_defaults(paper, profile))) == expected, name


def test_explicit_parameter_wins_over_profile():
    cfg = resolve("data_and_metrics", "cpu", image_size=96, epochs=7, batch_size=3, seed=5)
    assert (cfg.image_size, cfg.epochs, cfg.batch_size) == (96, 7, 3)
    assert cfg.seeds == [5]


def test_profiles_are_ordered_by_budget():
    smoke, cpu = profile_defaults("x", "smoke"), profile_defaults("x", "cpu")
    paper = profile_defaults("x", "paper")
    assert smoke["image_size"] < cpu["image_size"] <= paper["image_size"]
    assert smoke["epochs"] <= cpu["epochs"] <= paper["epochs"]
    assert profile_defaults("x", "study")["n_seeds"] >= 3


def test_categories_accept_a_comma_separated_string():
    cfg = resolve("x", "smoke", categories="brick, grass")
    assert cfg.categories == ["brick", "grass"]


def test_data_root_without_dataset_means_mvtec_layout():
    assert resolve("x", "cpu", data_root="/data/mvtec").dataset == "mvtec_ad"


def test_unknown_profile_and_missing_root_are_clear_errors():
    with pytest.raises(ValueError, match="unknown profile 'fast'.*smoke"):
        resolve("x", "fast")
    with pytest.raises(ValueError, match="needs data_root"):
        resolve("x", "paper")


def test_smoke_limits_categories_unless_they_are_named(tmp_path):
    from adlib.data.sources import choose_categories

    for name in ("a", "b", "c"):
        (tmp_path / name / "train" / "good").mkdir(parents=True)
    smoke = resolve("x", "smoke")
    assert choose_categories("embedded", tmp_path, smoke.categories, smoke.max_categories) == ["a", "b"]
    named = resolve("x", "smoke", categories="c")
    assert choose_categories("embedded", tmp_path, named.categories, named.max_categories) == ["c"]
    cpu = resolve("x", "cpu")
    assert choose_categories("embedded", tmp_path, cpu.categories, cpu.max_categories) == ["a", "b", "c"]


def test_setup_gives_the_chapter_protocol_and_a_paper_run_its_estimate_first(tmp_path, capsys):
    from adlib.chapters.gpucheck import write_tree
    from adlib.chapters.profiles import setup
    from adlib.study.load import load_study

    root = write_tree(tmp_path / "mvtec", 64, n_train=4, n_test=2)
    run = setup("cse_patch_svdd", "paper", data_root=str(root), image_size=64, device="cpu")
    assert run.protocol == load_study("cse_patch_svdd").protocol(run.cfg)
    assert run.categories == ["bottle", "grid"] and run.device == "cpu"
    assert "the full paper profile" in capsys.readouterr().out   # the warm-up ran first
    cpu = setup("cse_patch_svdd", "cpu", data_root=str(root), device="cpu")
    assert "warm-up" not in capsys.readouterr().out and cpu.protocol["epochs"] == cpu.cfg.epochs
    assert setup("data_and_metrics", "cpu", data_root=str(root), device="cpu").protocol is None
