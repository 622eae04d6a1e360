"""Building blocks shared by the chapters (see adlib/__init__.py)."""

from torch import nn


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
