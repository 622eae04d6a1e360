"""Chapter 6's comparison grid: one image size, one set of seeds and categories for every
method, every trainable method beside its untrained self, and a smoke run of each family."""

import math
import sys

import pytest

from adlib.study.jsonable import jsonable
from adlib.chapters.profiles import resolve
from adlib.chapters.comparison import card as C
from adlib.chapters.comparison import study as S
from adlib.study.engine import plan


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread, as a study worker runs (and quick on a loaded machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



def _tasks(profile: str, grid: str | None = None):
    """The grid's tasks as ``python -m adlib study`` plans them under ``profile``."""
    cfg = resolve("comparison", profile, data_root="/data/mvtec" if profile == "paper" else None)
    categories = cfg.categories or list(C.CATEGORIES)
    tasks, _ = plan(C.STUDY, C.STUDY.grid(grid or cfg.grid), C.protocol(cfg), cfg.seeds,
                    categories, dataset=cfg.dataset, data_root="root")
    return cfg, tasks


def test_the_study_grid_gives_every_method_one_size_seed_set_and_category_set():
    cfg, tasks = _tasks("study")
    assert cfg.image_size == C.IMAGE_SIZE and tuple(cfg.seeds) == C.SEEDS
    assert set(cfg.categories) == set(C.CATEGORIES) and len(C.CATEGORIES) == 6
    seeds, methods = {}, set()
    for task in tasks:
        s = S.method_task(task).settings
        assert task.categories == tuple(cfg.categories), task.config
        assert task.settings["image_size"] == s["image_size"] == C.IMAGE_SIZE, task.config
        assert s["dataset"] == "embedded"
        seeds.setdefault(task.config, set()).add(task.seed)
        methods.add(task.settings["method"])
    assert methods == set(C.METHODS)
    assert all(found == set(C.SEEDS) for found in seeds.values()), seeds
    assert len(tasks) == len(C.GRIDS["study"]) * len(C.SEEDS)


def test_a_task_and_its_row_key_carry_only_their_own_methods_settings():
    """The protocol holds every chapter's settings; a task keeps its method's alone, so a row
    names what it ran with and another chapter's protocol change cannot rerun it."""
    cfg, tasks = _tasks("study")
    for task in tasks:
        assert "chapters" not in task.settings, task.config
        assert task.settings == {"method": task.settings["method"], **S.method_task(task).settings}
    knn = next(t for t in tasks if t.config == "kNN" and t.seed == 0)
    protocol = C.protocol(cfg)
    protocol["chapters"]["rlr"] = {**protocol["chapters"]["rlr"], "lr": 1.0}
    cell = next(c for c in C.GRIDS["study"] if c.config == "kNN")
    assert C.STUDY.cell_settings(protocol, cell) == knn.settings


def test_each_method_runs_its_chapters_study_protocol_at_the_common_size():
    _, tasks = _tasks("study")
    by_config = {t.config: S.method_task(t).settings for t in tasks if t.seed == 0}
    rlr_study = jsonable(C.chapter_protocol("rlr", "study", "embedded", 128))
    assert by_config["RLR"] == {**rlr_study, "variant": "MLKA+LCA"}
    assert by_config["MAAE"]["epochs"] == 30 and by_config["UniAD"]["variant"] == "UniAD"
    assert by_config["noise-to-norm"]["epochs"] == 60 and by_config["noise-to-norm"]["lam"] == 0.3
    # the form with which chapter 3's M-net beat its untrained self (its default did not)
    assert by_config["noise-to-norm"]["msssim"] == "eq7"
    assert by_config["untrained noise-to-norm"]["msssim"] == "eq7"
    assert by_config["Patch SVDD"]["attention"] == "none" and by_config["C-SE+LBR"]["lbr"] is True
    assert by_config["LEA colour map"]["colouriser_epochs"] == 60
    assert by_config["kNN"]["sigma"] == 2.0


@pytest.mark.parametrize("profile", ["smoke", "study", "paper"])
def test_chapter_protocols_are_the_ones_their_profiles_resolve_to(profile):
    """The comparison builds each chapter's protocol from its card (keeping the registry out of
    its code hash): it must be what ``resolve`` gives, with only the data set and size moved."""
    dataset, size = ("mvtec_ad", 256) if profile == "paper" else ("embedded", 96)
    from adlib.study.load import load_study

    for key in dict.fromkeys(m.chapter for m in C.methods().values()):
        if key == C.KNN_CHAPTER:
            continue
        cfg = resolve(key, profile, dataset=dataset, image_size=size,
                      data_root="/data/mvtec" if profile == "paper" else None)
        assert C.chapter_protocol(key, profile, dataset, size) == load_study(key).protocol(cfg), key


def test_every_trainable_method_has_its_untrained_cell_and_lea_nets_network_is_not_ranked():
    for name in ("smoke", "study", "paper"):
        cells = C.GRIDS[name]
        untrained = {c.overrides["method"] for c in cells if c.overrides.get("epochs") == 0}
        trainable = {m for m, spec in C.METHODS.items() if spec.untrained is not None}
        assert untrained == trainable == set(C.METHODS) - {"kNN"}, name
        assert not any("LEA-Net" in c.config for c in cells)
    _, tasks = _tasks("study")
    for task in tasks:
        s = S.method_task(task).settings
        if task.overrides.get("epochs") == 0:
            assert s.get("epochs") == 0 or s.get("colouriser_epochs") == 0, task.config
    from adlib.chapters.lea_net import study as lea

    assert S.RUNS["LEA colour map"] == ("lea_net", lea.colour_map_run)   # the colour map, never the ADN
    assert set(S.RUNS) == set(C.METHODS) == set(C.BOOK_METHODS)   # the book's, from their cards
    assert list(C.METHODS) == list(C.BOOK_METHODS)                # in book order
    assert all(S.RUNS[name][0] == method.chapter for name, method in C.METHODS.items())


def test_the_paper_grid_is_the_same_comparison_on_mvtec_ad():
    cfg, tasks = _tasks("paper")
    assert cfg.dataset == "mvtec_ad" and cfg.image_size == 256 and tuple(cfg.seeds) == C.SEEDS
    assert {c.config for c in C.GRIDS["paper"]} == {c.config for c in C.GRIDS["study"]}
    for task in tasks:
        s = S.method_task(task).settings
        assert (s["dataset"], s["image_size"]) == ("mvtec_ad", 256)


def test_the_cpu_grid_is_two_methods_on_two_categories_with_one_seed():
    cfg, tasks = _tasks("cpu")
    assert len(cfg.categories) == 2 and cfg.seeds == [0] and cfg.image_size == C.IMAGE_SIZE
    assert {t.settings["method"] for t in tasks} == {"kNN", "RLR"}


def test_epochs_other_than_none_or_zero_are_refused():
    settings = {**C.protocol(resolve("comparison", "smoke")), "method": "RLR", "epochs": 3}
    with pytest.raises(ValueError, match="untrained"):
        C.method_settings(settings)
    with pytest.raises(ValueError, match="trains nothing"):
        C.method_settings({**settings, "method": "kNN", "epochs": 0})


SMOKE_CELLS = ["kNN", "C-SE+LBR", "MAAE", "noise-to-norm", "LEA colour map", "RLR",
               "untrained LEA colour map"]   # the skeleton's untrained path has its own tests


@pytest.mark.parametrize("config", SMOKE_CELLS)
def test_a_smoke_run_of_each_family_gives_the_three_metrics_and_the_costs(config, embedded_root,
                                                                           one_thread):
    from adlib.study.spec import Task

    cfg = resolve("comparison", "smoke")
    cell = next(c for c in C.GRIDS["smoke"] if c.config == config)
    settings = C.STUDY.cell_settings(C.protocol(cfg), cell)
    task = Task(C.STUDY.module, "comparison", cell.ablation, cell.config, dict(cell.overrides),
                settings, 0, ("brick",), cfg.dataset, str(embedded_root), "cpu")
    rows = S.run(task)
    assert [r["category"] for r in rows] == ["brick"]
    metrics = rows[0]["metrics"]
    for name in ("image_auroc", "pixel_auroc", "aupro"):
        assert 0.0 <= metrics[name] <= 100.0, (name, metrics[name])
    assert rows[0]["inference_seconds"] > 0 and math.isfinite(rows[0]["inference_seconds"])
    if sys.platform == "linux":
        assert rows[0]["peak_memory_mb"] >= 0
    assert metrics["parameters"] == (0 if config == "kNN" else rows[0]["model"].parameter_count)
    assert not isinstance(rows[0]["model"], S.TimedDetector)
    if config.startswith("untrained"):
        assert rows[0]["final_loss"] is None


@pytest.mark.skipif(sys.platform != "linux", reason="the CPU peak reads /proc/self")
def test_the_peak_memory_window_sees_an_allocation_made_inside_it_and_not_one_before():
    import numpy as np

    before = np.ones(60 * 2**20 // 8)          # 60 MB held from before the window opens
    start = S._reset_peak_memory("cpu")
    inside = np.ones(120 * 2**20 // 8)         # 120 MB touched inside it
    peak = S._peak_memory_mb("cpu", start)
    del inside
    assert 100 <= peak < 170, peak              # the 60 MB before it do not count
    assert before.sum() > 0


def _page_rows(gap: float, seeds: int = 3) -> "pd.DataFrame":
    """Two methods on three categories: A trained beats its untrained self by ``gap``; B
    trains nothing (as kNN)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for seed in range(seeds):
        for category in ("brick", "coins", "retina"):
            noise = rng.normal(0, 1)
            for config, ablation, value in (("A", "methods", 70 + gap + noise),
                                            ("untrained A", "untrained", 70 + rng.normal(0, 1)),
                                            ("B", "methods", 80 + noise)):
                rows.append({"ablation": ablation, "config": config, "seed": seed,
                             "category": category, "fold": None, "image_auroc": value,
                             "pixel_auroc": value, "parameters": 10.0 if config == "A" else 0.0,
                             "train_seconds": 60.0, "inference_seconds": 0.002,
                             "peak_memory_mb": 5.0})
    return pd.DataFrame(rows)


def test_the_page_says_whether_a_method_beats_its_untrained_self_with_the_sign_kept():
    from adlib.chapters.comparison import page as W

    assert W.learned(_page_rows(gap=8.0)).set_index("method").loc["A", "learned"]
    level = W.learned(_page_rows(gap=0.0)).set_index("method").loc["A"]
    assert not level["learned"] and level["low"] < 0 < level["high"]
    worse = W.learned(_page_rows(gap=-8.0)).set_index("method").loc["A"]
    assert worse["difference"] < -5 and worse["high"] < 0 and not worse["learned"]
    table = W.ranking_table(_page_rows(gap=8.0))
    assert list(table["method"]) == ["B", "A"] and table["learned"].tolist() == [None, True]


def test_tied_groups_share_a_letter_and_training_time_is_per_image_of_what_was_trained():
    from adlib.chapters.comparison import page as W

    assert W.group_letters([["kNN", "RLR"], ["RLR", "MAAE"]]) == {"kNN": "a", "RLR": "ab",
                                                                "MAAE": "b"}
    images = {"brick": 10, "coins": 20, "retina": 30}
    separate = W.cost_table(_page_rows(gap=8.0), images).set_index("method")
    assert separate.loc["A", "train s / image"] == pytest.approx((6 + 3 + 2) / 3)
    # a unified model's rows carry each category's share (evaluate_unified): 3 x 20 s is its
    # one training, over the 60 images of all three categories
    rows = _page_rows(gap=8.0).assign(train_seconds=20.0)
    unified = W.cost_table(rows, images, unified=("A",)).set_index("method")
    assert unified.loc["A", "train s / image"] == pytest.approx(1.0)
    assert unified.loc["A", "inference ms / image"] == pytest.approx(2.0)
    assert "untrained A" not in unified.index


def test_the_page_builds_before_the_study_has_run_and_says_how_to_run_it():
    import pandas as pd

    from adlib.chapters.comparison import page as W

    page = W.Page(pd.DataFrame())
    parts = [page.answer(), page.learned_table(), *page.category_table(), page.pairwise_table(),
             page.cost_table(), page.papers_table(), page.findings()]
    assert all("python -m adlib study comparison --grid study" in str(p) for p in parts)
    assert page.rank_figure() is None and page.cost_figure() is None


def test_the_answer_box_ranks_the_methods_and_marks_the_one_that_did_not_learn():
    from adlib.chapters.comparison import page as W

    rows = _page_rows(gap=0.0)
    page = W.Page(rows, {"brick": 10, "coins": 10, "retina": 10})
    box = str(page.answer())
    assert box.index("<b>B</b>") < box.index("<b>A</b>")          # B ranks first
    assert "trains nothing" in box and ">no</b>" in box              # A did not beat its untrained self


def test_the_chapter_says_whether_each_method_beats_its_untrained_self_and_the_rows_agree():
    """Every trainable method's learning is a declared finding (the chapter says which does not
    learn; test_verdicts checks the committed rows support it); before the study has run, no
    finding is declared."""
    from adlib.study.report import committed_rows

    rows = committed_rows("comparison")
    if rows.empty:
        assert not C.CHAPTER.findings, "findings declared before the comparison has rows"
        return
    declared = {f.order for f in C.CHAPTER.findings if f.metric == "image_auroc"}
    missing = [c.overrides["method"] for c in C.GRIDS["study"] if c.ablation == "untrained"
               if f"{c.overrides['method']} > {c.config}" not in declared]
    assert not missing, f"say in CHAPTER.findings whether {missing} beat their untrained selves"
    assert set(rows["config"]) >= {c.config for c in C.GRIDS["study"]}


def test_the_per_category_table_names_its_methods_and_calls_no_lead_on_three_seeds():
    from adlib.chapters.comparison import page as W

    page = W.Page(_page_rows(gap=8.0), {"brick": 10, "coins": 10, "retina": 10})
    means, won = (table.data for table in page.category_table())
    assert list(means["method"]) == ["B", "A"]                    # rank order, names shown
    assert "low" not in won and set(won["verdict"]) == {"no verdict (< 6 seeds)"}
    page = W.Page(_page_rows(gap=8.0, seeds=6), {"brick": 10, "coins": 10, "retina": 10})
    won = page.category_table()[1].data
    assert "low" in won and set(won["verdict"]) == {"winner better"}


def test_the_papers_table_counts_every_verdict_of_each_chapter_once():
    """Each scoreboard verdict falls in one column, so a chapter's columns add up to its claim
    rows (the did-not-learn and not-comparable verdicts were once counted nowhere)."""
    import pandas as pd

    from adlib.analysis.claims import VERDICTS
    from adlib.book.verdicts import chapter_claim_rows
    from adlib.chapters.comparison import page as W

    grouped = [v for verdicts in W.VERDICT_GROUPS.values() for v in verdicts]
    assert sorted(grouped) == sorted(VERDICTS)
    claims = {key: chapter_claim_rows(key) for key in ("noise_to_norm", "maae")}
    ranking = pd.DataFrame({"method": ["MAAE", "noise-to-norm"]})
    table = W.papers_table(ranking, {"noise_to_norm": ["noise-to-norm"], "maae": ["MAAE"]},
                           claims).set_index("paper")
    for key, rows in claims.items():
        assert table.loc[key, list(W.VERDICT_GROUPS)].sum() == len(rows)
    assert table.loc["noise_to_norm", "did not learn"] > 0     # chapter 3's image-level checks


def test_the_run_table_shows_milliseconds_under_the_chapters_headers():
    """This run's table: inference in ms per image under the chapter's headers, one decimal."""
    import pandas as pd

    from adlib.chapters.comparison import page as W

    rows = pd.DataFrame({"config": ["kNN"], "category": ["brick"], "image_auroc": [89.44],
                         "pixel_auroc": [95.6], "aupro": [82.8], "train_seconds": [0.5],
                         "inference_seconds": [0.0291], "seed": [0]})
    styled = W.run_table(rows)
    assert list(styled.data.columns) == ["method", "category", "image AUROC", "pixel AUROC",
                                         "AUPRO", "train s", "inference ms / image"]
    html = styled.to_html()
    assert ">29.1<" in html and ">89.4<" in html
