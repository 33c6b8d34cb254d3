"""The Triton kernels of `fused.up_gelu` and `fused.up_rms_norm` (CUDA), imported on first use.

Each output tile is `y` plus `h U^T` (a rank-`R` dot on the tensor cores), then the GELU or, per
head row, the RMS norm, written once. Register use decides these memory-bound kernels' speed, so
(checked with `cuobjdump --dump-resource-usage` on sm_86 and sm_90 builds): the rank is a
compile-time constant and its loop unrolled (a runtime loop around the dot multiplies the
registers), a tile's offset is one 64-bit scalar with 32-bit offsets inside it, and a tile that
divides the problem (EVEN, for every config alike) is loaded without masks. Loads are 128 bits
wide where Triton specializes the pointers and sizes as multiples of 16 at launch, as Flux's are.
"""
import os

import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"   # Triton's CPU interpreter cannot time configs


def _configs(shapes):
    """Autotuning configs from `(BM, [BN,] warps)`."""
    found = [triton.Config(dict(zip(("BM", "BN"), shape[:-1])), num_warps=shape[-1], num_stages=1)
             for shape in shapes]
    return found[:1] if INTERPRETED else found


@triton.jit
def _load(pointers, mask, EVEN: tl.constexpr):
    if EVEN:
        value = tl.load(pointers)
    else:
        value = tl.load(pointers, mask=mask, other=0.0)
    return value


@triton.jit
def _store(pointers, value, mask, EVEN: tl.constexpr):
    if EVEN:
        tl.store(pointers, value)
    else:
        tl.store(pointers, value, mask=mask)


@triton.jit
def _up(h, up, rows_left, columns_left, h_stride, up_stride, acc, RANK: tl.constexpr, BR: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, EVEN: tl.constexpr):
    """`acc + h U^T` for one tile: `h` at the tile's first row, `up` at its first column."""
    i, j = tl.arange(0, BM), tl.arange(0, BN)
    for start in tl.static_range(0, RANK, BR):
        r = start + tl.arange(0, BR)
        a = _load(h + i[:, None] * h_stride + r[None, :], (i[:, None] < rows_left) & (r[None, :] < RANK), EVEN)
        u = _load(up + j[:, None] * up_stride + r[None, :],     # [BN, BR]: read along the rank, as `up` is laid out
                  (j[:, None] < columns_left) & (r[None, :] < RANK), EVEN)
        acc = tl.dot(a, tl.trans(u), acc)
    return acc


GELU_SHAPES = ((64, 64, 8), (32, 64, 4), (64, 128, 8))   # (BM, BN, warps); powers of two, so a problem that
NORM_SHAPES = ((32, 4), (32, 8), (64, 8))                # the largest divides is EVEN for every config
GELU_EVEN = (max(s[0] for s in GELU_SHAPES), max(s[1] for s in GELU_SHAPES))
NORM_EVEN = max(s[0] for s in NORM_SHAPES)


@triton.autotune(configs=_configs(GELU_SHAPES), key=["columns", "RANK"])
@triton.jit
def up_gelu(y, h, up, out, rows, columns, y_stride, h_stride, up_stride, out_stride, gelu_c,
            RANK: tl.constexpr, BR: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, EVEN: tl.constexpr):
    tiles_n = tl.cdiv(columns, BN)
    m0 = (tl.program_id(0) // tiles_n) * BM
    n0 = (tl.program_id(0) % tiles_n) * BN
    row = m0.to(tl.int64)
    acc = _up(h + row * h_stride, up + n0.to(tl.int64) * up_stride, rows - m0, columns - n0, h_stride, up_stride,
              tl.zeros((BM, BN), dtype=tl.float32), RANK, BR, BM, BN, EVEN)
    i, j = tl.arange(0, BM), tl.arange(0, BN)
    inside = (i[:, None] < rows - m0) & (j[None, :] < columns - n0)
    acc += _load(y + row * y_stride + n0 + i[:, None] * y_stride + j[None, :], inside, EVEN).to(tl.float32)
    inner = gelu_c * (acc + 0.044715 * acc * acc * acc)
    gelu = 0.5 * acc * (1.0 + (2.0 * tl.sigmoid(2.0 * inner) - 1.0))
    _store(out + row * out_stride + n0 + i[:, None] * out_stride + j[None, :], gelu.to(out.dtype.element_ty), inside,
           EVEN)


@triton.autotune(configs=_configs(NORM_SHAPES), key=["heads", "RANK"])
@triton.jit
def up_rms_norm(y, h, up, w, out, tokens, heads, y_sb, y_sh, y_sl, h_stride, up_stride, eps,
                RANK: tl.constexpr, D: tl.constexpr, BR: tl.constexpr, BM: tl.constexpr, EVEN: tl.constexpr):
    """Grid (batch, token tiles, heads): a tile is `BM` tokens of one head of one batch item."""
    batch, t0, head = tl.program_id(0).to(tl.int64), tl.program_id(1) * BM, tl.program_id(2)
    h_row = (batch * tokens + t0) * h_stride
    acc = _up(h + h_row, up + (head * D).to(tl.int64) * up_stride, tokens - t0, D, h_stride, up_stride,
              tl.zeros((BM, D), dtype=tl.float32), RANK, BR, BM, D, EVEN)
    i, d = tl.arange(0, BM), tl.arange(0, D)
    inside = (i[:, None] < tokens - t0) & (d[None, :] < D)
    start = batch * y_sb + t0.to(tl.int64) * y_sl + head * y_sh
    acc += _load(y + start + i[:, None] * y_sl + d[None, :], inside, EVEN).to(tl.float32)
    scale = 1.0 / tl.sqrt(tl.sum(acc * acc, axis=1) / D + eps)
    acc = acc * scale[:, None] * tl.load(w + d).to(tl.float32)[None, :]
    at = ((batch * heads + head) * tokens + t0) * D
    _store(out + at + i[:, None] * D + d[None, :], acc.to(out.dtype.element_ty), inside, EVEN)
