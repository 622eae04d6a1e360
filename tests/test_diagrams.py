"""adlib.book.diagrams: the layer table tells the truth about a forward pass; the diagram shows one
box per called module, legibly (no text under 8 pt). Run with MPLBACKEND=Agg."""

from __future__ import annotations

from collections import Counter, OrderedDict

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from matplotlib.text import Text

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from adlib.book.diagrams import architecture_diagram, layer_table  # noqa: E402
from adlib.book.figures import COLUMN_IN, smallest_shown_pt  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), norm=nn.BatchNorm2d(4), act=nn.ReLU(),
                                     flat=nn.Flatten(), fc=nn.Linear(4 * 6 * 6, 5)))


class TwoInputs(nn.Module):
    """Two inputs, a dict output, a module list, a branch and a module never called."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(3, 6)
        self.blocks = nn.ModuleList(nn.Linear(6, 6) for _ in range(3))
        self.unused = nn.Linear(2, 2)

    def forward(self, x, y):
        h = self.a(x)
        for block in self.blocks:
            h = block(h)
        return {"h": h + self.b(y), "x": x}


def test_sequential_order_shapes_and_parameters():
    model, x = tiny(), torch.randn(2, 3, 8, 8)
    table = layer_table(model, x)
    assert list(table["name"]) == ["conv", "norm", "act", "flat", "fc"]
    assert list(table["class"]) == ["Conv2d", "BatchNorm2d", "ReLU", "Flatten", "Linear"]
    h = x
    model.eval()
    for module, (_, row) in zip(model.children(), table.iterrows()):
        h = module(h)
        assert row["output shape"] == "×".join(map(str, h.shape[1:]))
        assert row["parameters"] == sum(p.numel() for p in module.parameters())
    assert list(table["calls"]) == [1] * 5
    assert list(table["inputs from"]) == ["input", "conv", "norm", "act", "flat"]


def test_forward_leaves_the_model_as_it_was():
    model = tiny().train()
    before = model.norm.running_mean.clone()
    layer_table(model, torch.randn(2, 3, 8, 8) * 5 + 3)
    assert model.training and model.norm.training
    assert torch.equal(model.norm.running_mean, before)


def test_not_called_module_is_listed_last():
    table = layer_table(TwoInputs(), torch.randn(2, 4), torch.randn(2, 3))
    assert list(table["name"]) == ["a", "blocks", "b", "unused"]
    last = table.iloc[-1]
    assert (last["name"], last["output shape"], last["calls"], last["parameters"]) == ("unused", "not called", 0, 6)


def test_module_list_calls_form_one_box_and_inputs_are_traced():
    table = layer_table(TwoInputs(), torch.randn(2, 4), torch.randn(2, 3)).set_index("name")
    assert table.loc["blocks", "calls"] == 3
    assert table.loc["blocks", "parameters"] == 3 * 42
    assert table.loc["a", "inputs from"] == "input 0"
    assert table.loc["b", "inputs from"] == "input 1"       # a second branch, not the blocks' output
    deeper = layer_table(TwoInputs(), torch.randn(2, 4), torch.randn(2, 3), depth=2)
    assert list(deeper["name"][:4]) == ["a", "blocks.0", "blocks.1", "blocks.2"]
    assert deeper.set_index("name").loc["blocks.1", "inputs from"] == "blocks.0"


def test_tuple_output_shows_its_first_tensor():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x.sum(1)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            return self.pair(x)

    assert layer_table(Wrap(), torch.zeros(2, 3, 5)).loc[0, "output shape"] == "3×5 +1 more"


def _texts(fig: Figure) -> list[Text]:
    """The texts drawn on the diagram (boxes, title, footer), not the legend's."""
    return [t for t in fig.axes[0].texts if t.get_text()]


def test_diagram_has_one_box_per_called_module_and_no_small_text():
    model, x = tiny(), torch.randn(2, 3, 8, 8)
    fig = architecture_diagram(model, x, title="tiny")
    assert isinstance(fig, Figure)
    names = list(layer_table(model, x)["name"])
    texts = [" ".join(t.get_text().split()) for t in _texts(fig)]   # lines wrapped in a box, joined
    for name in names:
        assert texts.count(name) == 1, name
    assert sum(isinstance(p, FancyBboxPatch) for p in fig.axes[0].patches) == len(names) + 1  # + input
    assert smallest_shown_pt(fig) >= 8
    assert any("Conv2d" in t and "4×6×6" in t and "112 params" in t for t in texts)


def test_diagram_wraps_many_boxes_and_keeps_text_legible():
    model = nn.Sequential(*(nn.Linear(8, 8) for _ in range(12)))
    fig = architecture_diagram(model, torch.zeros(1, 8))
    boxes = [p for p in fig.axes[0].patches if isinstance(p, FancyBboxPatch)]
    rows = Counter(round(p.get_y(), 3) for p in boxes)
    assert len(boxes) == 13 and len(rows) > 1 and max(rows.values()) <= 7      # wrapped into rows
    assert smallest_shown_pt(fig) >= 8                                    # as shown in the column
    assert 6 <= fig.get_size_inches()[0] <= COLUMN_IN + 0.1


def test_diagram_names_branches_and_folds_activations():
    fig = architecture_diagram(TwoInputs(), torch.randn(2, 4), torch.randn(2, 3), input_label=("x", "y"))
    assert any(t.get_text().endswith("from y") for t in _texts(fig))   # b does not take blocks' output
    folded = architecture_diagram(tiny(), torch.randn(2, 3, 8, 8), fold_activations=True)
    texts = [" ".join(t.get_text().split()) for t in _texts(folded)]
    assert "act" not in texts and any("BatchNorm2d + ReLU" in t for t in texts)
