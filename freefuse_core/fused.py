"""A LoRA up projection fused into the GELU that reads the layer's output.

Flux's MLP-in layers (double-block `img_mlp.0` / `txt_mlp.0`, the MLP columns of single-block
`linear1`) feed a tanh GELU and nothing else. For those columns

    out = gelu_tanh(y + h U^T)          h = F (x A^T) [tokens, R],  U = s B [columns, R]

is computed in one pass over `y`: the GELU reads `y` anyway, so the term costs a rank-`R` dot per
output tile instead of a second read and write of `y` (`y += h U^T`, then the GELU). On CUDA it is
one Triton kernel; elsewhere, or without Triton, it is the same sum in torch.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os

import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
GELU_C = math.sqrt(2.0 / math.pi)


def up_gelu(y: torch.Tensor, h: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`gelu_tanh(y + h up^T)` for `y` `[..., C]` (a column slice of a wider output is fine), `h`
    `[rows, R]` with `rows` = the product of `y`'s leading dims, `up` `[C, R]`. A new tensor shaped
    like `y`, in `y`'s dtype; the sum and the GELU are evaluated in at least float32."""
    if h.shape[0] * y.shape[-1] != y.numel() or up.shape != (y.shape[-1], h.shape[1]):
        raise ValueError(f"up_gelu: output {tuple(y.shape)}, rank input {tuple(h.shape)} and up "
                         f"{tuple(up.shape)} do not fit")
    if y.is_cuda and HAS_TRITON and _rows_view(y) is not None:
        return _triton_up_gelu(y, h, up)
    wide = torch.promote_types(y.dtype, torch.float32)
    rows = y.reshape(-1, y.shape[-1]).to(wide) + h.to(wide) @ up.to(wide).t()
    return torch.nn.functional.gelu(rows, approximate="tanh").to(y.dtype).view(y.shape)


def _rows_view(y: torch.Tensor):
    """`(rows, row stride)` where `y` is a 2-D grid of rows with unit column stride, else None."""
    if y.stride(-1) != 1:
        return None
    stride = y.stride(-2) if y.ndim > 1 else y.shape[-1]
    for dim in range(y.ndim - 2):
        if y.stride(dim) != y.stride(dim + 1) * y.shape[dim + 1]:
            return None
    return y.numel() // y.shape[-1], stride


def _triton_up_gelu(y: torch.Tensor, h: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    rows, y_stride = _rows_view(y)
    columns, rank = up.shape
    out = torch.empty(y.shape, device=y.device, dtype=y.dtype)
    h = h if h.stride(-1) == 1 else h.contiguous()
    up = up if up.stride(-1) == 1 else up.contiguous()
    block_r = max(16, min(64, _next_pow2(rank)))

    def grid(meta):
        return (_cdiv(rows, meta["BM"]) * _cdiv(columns, meta["BN"]),)

    _kernel()[grid](y, h, up, out, rows, columns, rank, y_stride, h.stride(0), up.stride(0), columns,
                 GELU_C, BR=block_r)
    return out


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def _kernel():
    """The Triton kernel, defined on first use: importing Triton takes time, and CPU runs never need it."""
    import triton
    import triton.language as tl

    configs = [triton.Config({"BM": bm, "BN": bn}, num_warps=w, num_stages=s)
               for bm, bn, w, s in ((64, 128, 4, 2), (128, 128, 8, 2), (64, 256, 8, 2), (128, 64, 4, 3))]
    if os.environ.get("TRITON_INTERPRET") == "1":   # Triton's CPU interpreter cannot time configs
        configs = configs[:1]

    @triton.autotune(configs=configs, key=["columns", "rank"])
    @triton.jit
    def up_gelu_kernel(y, h, up, out, rows, columns, rank, y_stride, h_stride, up_stride, out_stride,
                       gelu_c, BR: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
        pid = tl.program_id(0)
        tiles_n = tl.cdiv(columns, BN)
        pid_m, pid_n = pid // tiles_n, pid % tiles_n
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        in_m, in_n = rm < rows, rn < columns
        tile = in_m[:, None] & in_n[None, :]
        acc = tl.load(y + rm[:, None].to(tl.int64) * y_stride + rn[None, :], mask=tile, other=0.0).to(tl.float32)
        for start in range(0, rank, BR):
            rr = start + tl.arange(0, BR)
            in_r = rr < rank
            a = tl.load(h + rm[:, None].to(tl.int64) * h_stride + rr[None, :], mask=in_m[:, None] & in_r[None, :],
                        other=0.0)
            b = tl.load(up + rn[None, :].to(tl.int64) * up_stride + rr[:, None], mask=in_r[:, None] & in_n[None, :],
                        other=0.0)
            acc += tl.dot(a, b, out_dtype=tl.float32)
        inner = gelu_c * (acc + 0.044715 * acc * acc * acc)
        gelu = 0.5 * acc * (1.0 + (2.0 * tl.sigmoid(2.0 * inner) - 1.0))
        tl.store(out + rm[:, None].to(tl.int64) * out_stride + rn[None, :], gelu.to(out.dtype.element_ty), mask=tile)

    return up_gelu_kernel
