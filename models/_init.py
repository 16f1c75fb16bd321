"""Weight initialisation shared by the transformer-style families."""

from __future__ import annotations

from timm.layers import trunc_normal_
from torch import nn


def trunc_normal_init(m: nn.Module, types: tuple[type[nn.Module], ...] = (nn.Linear,), std: float = 0.02) -> None:
    """Truncated-normal(std) weights and zero biases for layers of `types`: the ViT-family init that PVT, HorNet,
    LVT and PatchConvNet's official code use (for linears; HorNet also for convs)."""
    if isinstance(m, types):
        trunc_normal_(m.weight, std=std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
