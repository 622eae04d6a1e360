"""Generated finding sentences say what the numbers say."""

import numpy as np

from adlib.analysis.findings import map_contrast, map_sentence, versus


def test_versus_orders_models_and_calls_small_gaps_level():
    line = versus("pixel_auroc", {"trained": 76.4, "random": 70.4}, "This run")
    assert line.startswith("This run: pixel AUROC trained 76.4, random 70.4")
    assert "trained is above random (+6.0 points)" in line
    assert "level with" in versus("image_auroc", {"a": 60.2, "b": 60.0}, "r")
    assert "a is below b (-5.0 points)" in versus("image_auroc", {"a": 55.0, "b": 60.0}, "r")


def test_map_contrast_finds_a_peak_on_the_defect_or_in_a_corner():
    amap, mask = np.zeros((32, 32)), np.zeros((1, 32, 32))
    mask[0, 10:16, 10:16] = 1
    amap[10:16, 10:16] = 1.0
    c = map_contrast(amap, mask)
    assert c["peak_on_defect"] and c["ratio"] == np.inf and not c["peak_on_border"]
    amap[0, 0] = 5.0   # a corner artefact above the defect
    c = map_contrast(amap, mask)
    assert not c["peak_on_defect"] and c["peak_on_border"] and c["peak_from_border"] == 0
    assert "off the defect, 0 px from the border" in map_sentence("m", amap, mask)
