"""The chapter-0 example must really separate the metrics the way the text says."""

from adlib.chapters.data_and_metrics.page import region_size_example
from adlib.analysis.metrics import aupro, image_auroc, pixel_auroc


def test_pixel_auroc_prefers_the_sharp_detector_and_aupro_the_complete_one():
    masks, labels, maps = region_size_example(seed=0)
    sharp, coarse = maps["sharp, misses small"], maps["coarse, finds all"]
    assert pixel_auroc(sharp, masks) > pixel_auroc(coarse, masks)
    assert aupro(coarse, masks) > aupro(sharp, masks) + 0.1
    # image AUROC (max of each map) sees the missed small defects as missed images
    scores = {k: m.reshape(len(m), -1).max(1) for k, m in maps.items()}
    assert image_auroc(scores["coarse, finds all"], labels) > image_auroc(
        scores["sharp, misses small"], labels)
