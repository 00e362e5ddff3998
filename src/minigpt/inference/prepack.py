"""Low-precision weights for the decoding engine: a layer's weights cast once per call (bf16,
fp16) and, where this torch build and CPU allow, reordered once into oneDNN's blocked layout
(`prepack`); weight-only int8 (`quantize_int8`); the matching linear (`packed_linear`); and
fused projections (`concat_linear`). Shapes: a weight is `(out, in)`, a bias `(out,)`."""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

def concat_linear(parts: list[tuple[torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack `(weight (out_i, in), bias (out_i,) | None)` pairs along the output dimension."""
    weight = torch.cat([w for w, _ in parts])
    if all(b is None for _, b in parts):
        return weight, None
    bias = torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in parts])
    return weight, bias


def quantize_int8(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Symmetric per-output-channel int8: `weight ≈ q · scale[:, None]`, q in [−127, 127].

    Returns `(q (out, in) int8, bias, scale (out,) in the weight's dtype)`. Weight-only: the
    activations stay bf16, so at batch 1 a step reads a quarter of the fp32 bytes.
    """
    w = weight.float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, bias, scale.to(weight.dtype)


class Prepacked(NamedTuple):
    """A bf16 weight reordered once into oneDNN's blocked layout, with its bias."""

    weight: torch.Tensor  # (out, in), mkldnn layout
    bias: torch.Tensor | None  # (out,)


@functools.cache
def can_prepack() -> bool:
    """True when this torch build and this CPU can reorder bf16 weights for oneDNN: the build has
    the op, and the CPU has the instructions its bf16 path needs (avx512bw/vl/dq or
    avx_ne_convert; a plain AVX2 CPU refuses), which a tiny probe reorder tells."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=torch.bfloat16), 16)
    except RuntimeError:
        return False
    return True


def prepack(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    """`(W, b)` as a `Prepacked` for oneDNN's CPU linear, or unchanged if this build refuses.

    `F.linear` on plain bf16 weights lets oneDNN reorder the weight into its blocked (AMX)
    layout on every call, which re-reads and re-writes it; reordering once when the weights are
    cast (with the fused RMSNorm) moved `benchmarks/bench_decode.py`'s bf16 engine from 2.5× /
    2.8× to 4.0× / 4.0× fp32 `generate` at batch 1 / 16, with results bit-identical to
    `F.linear` (tested). These are the ops PyTorch's own CPU inductor freezing uses; being
    private, any failure falls back to the plain weights.
    """
    try:
        return Prepacked(torch.ops.mkldnn._reorder_linear_weight(weight, 16), bias)
    except (RuntimeError, AttributeError):  # pragma: no cover - depends on the torch build
        return weight, bias


def packed_linear(inp: torch.Tensor, weights: tuple) -> torch.Tensor:
    """`inp @ W.T + b` with cached low-precision weights: `(W, b)`, `Prepacked` or int8
    `(q, b, scale)`."""
    if isinstance(weights, Prepacked):
        return torch.ops.mkldnn._linear_pointwise(inp.to(torch.bfloat16), weights.weight, weights.bias, "none", [], "")
    if len(weights) == 3:
        q, bias, scale = weights
        x = inp.to(scale.dtype)
        y = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), q, scale).view(*x.shape[:-1], q.shape[0])
        return y if bias is None else y + bias
    weight, bias = weights
    return F.linear(inp.to(weight.dtype), weight, bias)


__all__ = ["Prepacked", "can_prepack", "concat_linear", "packed_linear", "prepack", "quantize_int8"]
