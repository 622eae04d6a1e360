"""Architecture diagrams traced from one forward pass of the model, so they cannot go stale.

Hooks name each module as it runs; a torch-function mode follows every tensor from box to box,
so a skip connection or a second branch shows as "from ...". ``depth``: name parts, as in
``named_modules``; a module list is never called, so its children's calls form one box."""

from __future__ import annotations

import itertools
import math
import re

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.font_manager import FontProperties
from matplotlib.patches import FancyBboxPatch, Patch
from matplotlib.textpath import TextToPath
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.weak import WeakIdKeyDictionary

INPUT = "input"
KINDS = {"attention": r"Attention|Excitation|SKFF|Transformer", "conv": r"Conv", "norm": r"Norm"}
COLOURS = {"input": ("#ffffff", "#4d4d4d"), "attention": ("#fbe1cc", "#D55E00"),  # edges: viz.PALETTE
           "conv": ("#d9e8f5", "#0072B2"), "norm": ("#d9f0e4", "#009E73"), "other": ("#eeeeee", "#6d6d6d")}


def _tensors(obj) -> list[torch.Tensor]:
    return [t for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]


def _shape(obj, batch: int | None) -> str:
    found = _tensors(obj)
    dims = tuple(found[0].shape) if found else ()
    dims = dims[1:] if dims and dims[0] == batch else dims  # a block may fold the batch (4B patches)
    text = ("×".join(map(str, dims)) or "scalar") if found else type(obj).__name__
    return text + (f" +{len(found) - 1} more" if len(found) > 1 else "")


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class _Flow(TorchFunctionMode):
    """Tags every tensor with the boxes it was computed from, through any torch operation."""

    def __init__(self):
        super().__init__()
        self.tags = WeakIdKeyDictionary()

    def sources(self, obj) -> set:
        return set().union(*(self.tags.get(t, ()) for t in _tensors(obj)))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.tags.update({t: self.sources((args, kwargs)) for t in _tensors(out)})
        return out


def layer_table(model: nn.Module, *inputs, depth: int = 1) -> pd.DataFrame:
    """One row per box in call order: name, class, output shape (no batch dimension; a tuple's
    first tensor's; "first … last" call), trainable parameters, calls, inputs from (boxes, or
    ``input``; several tensors, lists flattened: ``input 0``, ``input 1``...). Modules never
    called come last, with shape "not called"."""
    modules = dict(model.named_modules(remove_duplicate=False))
    # a shared module has several names: it gets one box per place it is called from
    aliases = {id(m): [n for n, x in modules.items() if x is m] for m in model.modules()}
    trunc = lambda n: ".".join(n.split(".")[:depth])
    device = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device
    inputs = tree_map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, inputs)
    flat, stack, rows, flow = _tensors(inputs), [], {}, _Flow()
    batch = flat[0].shape[0] if flat and flat[0].dim() else None
    tags = [INPUT] if len(flat) == 1 else [f"{INPUT} {i}" for i in range(len(flat))]

    def enter(module, args, kwargs):
        prefix = f"{stack[-1]['name']}." if stack and stack[-1]["name"] else ""
        name = next((n for n in aliases[id(module)] if n.startswith(prefix)), aliases[id(module)][0])
        stack.append({"name": name, "inside": False, "from": flow.sources((args, kwargs))})

    def leave(module, args, kwargs, output):
        frame = stack.pop()
        name, key = frame["name"], trunc(frame["name"])
        level, outer = name.count(".") + 1 if name else 0, trunc(stack[-1]["name"]) if stack else ""
        # a box: a called leaf above depth, or the outermost call inside a name of that depth
        if (0 < level < depth and not frame["inside"]) or (level >= depth and outer != key):
            row = rows.setdefault(key, {"classes": [], "shapes": [], "from": set()})
            row["classes"].append(type(module).__name__)
            row["shapes"].append(_shape(output, batch))
            row["from"] |= frame["from"] - {key}
            for f in stack:
                f["inside"] = True
            flow.tags.update({t: {key} for t in _tensors(output)})

    flow.tags.update({t: {tag} for t, tag in zip(flat, tags)})
    training = {m: m.training for m in model.modules()}
    handles = [h for m in model.modules() for h in (m.register_forward_pre_hook(enter, with_kwargs=True),
                                                     m.register_forward_hook(leave, with_kwargs=True))]
    try:
        model.eval()  # no dropout, no noise, and batch norm's running statistics stay untouched
        with torch.no_grad(), flow:
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
        for m, t in training.items():
            m.training = t
    order = {**{t: i - len(tags) for i, t in enumerate(tags)}, **{k: i for i, k in enumerate(rows)}}
    table = [[k, r["classes"][0] if len(set(r["classes"])) == 1 else type(modules[k]).__name__,
              " … ".join(dict.fromkeys([r["shapes"][0], r["shapes"][-1]])), _params(modules[k]),
              len(r["shapes"]), ", ".join(sorted(r["from"], key=order.get))] for k, r in rows.items()]
    for n, m in modules.items():
        covered = any(f"{n}.".startswith(f"{k}.") or k.startswith(f"{n}.") for k in rows)
        level = n.count(".") + 1
        if n and (level == depth or (level < depth and not any(m.children()))) and not covered:
            table.append([n, type(m).__name__, "not called", _params(m), 0, ""])
    return pd.DataFrame(table, columns=["name", "class", "output shape", "parameters", "calls",
                                        "inputs from"])


def _box(row: dict, module: nn.Module, sources: list[str]) -> dict:
    inner = next(module.children()) if type(module).forward is nn.Module.forward and len(module) else module
    if type(inner) is nn.Sequential:  # what it holds says more; no-break spaces keep "2 × X" whole
        runs = [(n, len(list(g))) for n, g in itertools.groupby(type(m).__name__ for m in inner)]
        row["class"] = ", ".join(f"{k}\u00a0×\u00a0{n}" if k > 1 else n for n, k in runs)
    names = " ".join(type(m).__name__ for m in module.modules())  # a block is what it contains
    kind = next((k for k, pattern in KINDS.items() if re.search(pattern, names)), "other")
    return {**row, "inputs from": sources, "kind": kind}


def _wrap(text: str, inches: float, size: float = 8, weight: str = "normal") -> list[str]:
    """Lines that fit ``inches`` as drawn (measured: digits and "×" are wider than letters)."""
    font, measure = FontProperties(size=size, weight=weight), TextToPath().get_text_width_height_descent
    fits = lambda s: measure(s.strip(), font, False)[0] <= inches * 72 * 0.95
    # break after . _ , or a space; inside CamelCase only a piece still too long
    pieces = [q for p in re.split(r"(?<=[._, ])", text)
              for q in ([p] if fits(p) else re.split(r"(?<=[a-z0-9])(?=[A-Z])", p))]
    lines = [""]
    for p in filter(None, pieces):
        if lines[-1] and not fits(lines[-1] + p):
            lines.append("")
        lines[-1] += p
    return [line.strip() for line in lines if line.strip()]


def _count(n: int | None) -> str:
    return "" if n is None else "no params" if n == 0 else f"{n} params" if n < 1e3 else \
        f"{n / 1e3:.1f} k params" if n < 1e6 else f"{n / 1e6:.2f} M params"


def architecture_diagram(model: nn.Module, *inputs, depth: int = 1, title: str = "",
                         input_label: str | tuple[str, ...] = INPUT, fold_activations: bool = False):
    """Boxes in call order after an input box (one row up to 7, else rows of 6), by kind; an arrow
    where a box takes the previous box's output, "from ..." where it (also) takes another's.
    ``input_label``: the input box's name, or a name per input tensor (lists flattened).
    ``fold_activations``: a parameter-free, shape-keeping module (activation, dropout) joins the
    box before it, so a conv-activation chain stays short."""
    flat, named = _tensors(inputs), isinstance(input_label, str)
    tags = [INPUT] if len(flat) == 1 else [f"{INPUT} {i}" for i in range(len(flat))]
    labels = [t.replace(INPUT, input_label) for t in tags] if named else list(input_label)
    shapes = [_shape(t, flat[0].shape[0] if flat[0].dim() else None) for t in flat]
    shapes = shapes if len(flat) == 1 else [f"{n}: {s}" for n, s in zip(labels, shapes)]
    boxes = [{"name": input_label if named else "inputs", "class": "", "calls": 1, "parameters": None,
              "kind": "input", "output shape": "\n".join(shapes)}]
    alias, modules = dict(zip(tags, labels)), dict(model.named_modules(remove_duplicate=False))
    for row in layer_table(model, *inputs, depth=depth).query("calls > 0").to_dict("records"):
        prev, sources = boxes[-1], [alias.get(s, s) for s in row["inputs from"].split(", ") if s]
        if (fold_activations and row["parameters"] == 0 and row["calls"] == prev["calls"] == 1
                and row["output shape"] == prev["output shape"] and sources == [prev["name"]]):
            prev["class"] += f" + {row['class']}"
            alias[row["name"]] = prev["name"]
        else:
            boxes.append(_box(row, modules[row["name"]], sources))

    width, gap, line, pad, row_gap = 6.85, 0.32, 8.6 / 72 * 1.25, 0.08, 0.42  # inches; 8-pt lines
    cols = len(boxes) if len(boxes) <= 7 else math.ceil(len(boxes) / math.ceil(len(boxes) / 6))
    bw = (width - 0.2) / cols - gap
    for i, b in enumerate(boxes):
        came = set(labels) if i == 1 else {boxes[i - 1]["name"]}  # the input box: any input
        b["arrow"] = bool(came & set(b.get("inputs from", ())))
        others = ", ".join(s for s in b.get("inputs from", ()) if s not in came)
        note = ("+ from " if b["arrow"] else "from ") + others if others else ""
        b["head"] = _wrap(b["name"] + (f" ×{b['calls']}" if b["calls"] > 1 else ""), bw - 0.1, 8.5, "bold")
        b["body"] = [w for s in (b["class"], *b["output shape"].split("\n"), _count(b["parameters"]), note)
                     for w in _wrap(s, bw - 0.1)]
    rows = [boxes[r:r + cols] for r in range(0, len(boxes), cols)]
    heights = [max(len(b["head"]) + len(b["body"]) for b in r) * line + 2 * pad for r in rows]
    top = 0.5 if title else 0.15  # room for the title; 0.45 below for the footer and legend
    height = top + sum(heights) + row_gap * (len(rows) - 1) + 0.45
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes([0, 0, 1, 1], xlim=(0, width), ylim=(0, height))
    ax.axis("off")
    if title:
        ax.text(width / 2, height - 0.25, title, ha="center", va="center", fontsize=11, fontweight="bold")
    y, arrow = height - top, {"arrowstyle": "-|>", "color": "#4d4d4d", "lw": 1.0, "shrinkA": 0, "shrinkB": 0}
    for r, (row, h) in enumerate(zip(rows, heights)):
        for c, b in enumerate(row):
            x = b["x"] = 0.1 + gap / 2 + c * (bw + gap)
            ax.add_patch(FancyBboxPatch((x, y - h), bw, h, boxstyle="round,pad=0,rounding_size=0.08",
                                        fc=COLOURS[b["kind"]][0], ec=COLOURS[b["kind"]][1], lw=1.2))
            ax.text(x + bw / 2, y - pad, "\n".join(b["head"]), ha="center", va="top", fontsize=8.5,
                    fontweight="bold", linespacing=1.25)
            ax.text(x + bw / 2, y - pad - len(b["head"]) * line, "\n".join(b["body"]), ha="center",
                    va="top", fontsize=8, linespacing=1.25)
            if c and b["arrow"]:
                ax.annotate("", (x, y - h / 2), (x - gap, y - h / 2), arrowprops=arrow)
            elif r and b["arrow"]:  # from the end of the row above: down, back, down
                end, mid = rows[r - 1][-1]["x"] + bw / 2, y + row_gap / 2
                ax.plot([end, end, x + bw / 2], [y + row_gap, mid, mid], color="#4d4d4d", lw=1.0)
                ax.annotate("", (x + bw / 2, y), (x + bw / 2, mid), arrowprops=arrow)
        y -= h + row_gap
    ax.text(0.15, 0.2, f"{_count(_params(model))} trainable in all", fontsize=8, va="center", color="#4d4d4d")
    if len(kinds := [k for k in COLOURS if k != "input" and any(b["kind"] == k for b in boxes)]) > 1:
        ax.legend([Patch(fc=COLOURS[k][0], ec=COLOURS[k][1]) for k in kinds], kinds, loc="lower right",
                  ncol=len(kinds), fontsize=8, frameon=False, borderaxespad=0.3)
    return fig
