"""Multiply-accumulate counts in fvcore's convention, which is what these papers call "GFLOPs".

fvcore has no handle for the fused attention op; counting it as the two matmuls it replaces
(q·kᵀ and attn·v) gives the same total as the official implementations' explicit matmuls.
"""

from __future__ import annotations

from math import prod

import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn


def _sdpa_macs(inputs, outputs) -> int:
    q, k, v = (i.type().sizes() for i in inputs[:3])
    batch_heads = prod(q[:-2])
    return batch_heads * q[-2] * k[-2] * (q[-1] + v[-1])


def count_macs(model: nn.Module, *inputs: torch.Tensor) -> int:
    analysis = FlopCountAnalysis(model.eval(), inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        return int(analysis.total())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
