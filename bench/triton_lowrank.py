"""An experiment, measured by bench/layer_bench.py and not used by the pack: Triton kernels for the
masked low-rank term of Eq. 1, two launches per layer.

    down:  h[m, r] = F[m, owner(r)] * sum_k x[m, k] A[r, k]          (rank intermediate, masked)
    up:    y[m, o] += sum_{r in ranks(slice(o))} h[m, r] U[o, r - start(slice(o))]

`U` packs every output slice's `s B` into one `[out, width]` matrix (zero-padded to the widest
slice), and a tile table maps each output column tile to its slice's rank range, so all slices
of a fused layer (`qkv`, `linear1`) are one launch. Against `torch.mm` + mask + one `addmm_` per
slice this removes the launches and the output-sized read of small cuBLAS calls that fill few
multiprocessors; the output is still read and written once (`y` comes from the layer's own GEMM).
Measured on an H100 (docs/benchmarks.md) it was slower than the torch path that the pack uses.
"""
from __future__ import annotations

import functools

import torch

BLOCK_M_DOWN, BLOCK_R_DOWN, BLOCK_K = 32, 64, 128
BLOCK_M_UP, BLOCK_N_UP = 64, 128
NUM_WARPS_DOWN, NUM_WARPS_UP = 4, 4


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def down(x, a, f, owner, h, M, K, R, S, sxm, sfm, shm,
             HAS_MASK: tl.constexpr, BM: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr):
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        ranks = tl.program_id(1) * BR + tl.arange(0, BR)
        acc = tl.zeros((BM, BR), dtype=tl.float32)
        for k0 in range(0, K, BK):
            ks = k0 + tl.arange(0, BK)
            xt = tl.load(x + rows[:, None] * sxm + ks[None, :],
                         mask=(rows[:, None] < M) & (ks[None, :] < K), other=0.0)
            at = tl.load(a + ranks[:, None] * K + ks[None, :], mask=(ranks[:, None] < R) & (ks[None, :] < K), other=0.0)
            acc = tl.dot(xt, tl.trans(at), acc)
        if HAS_MASK:
            col = tl.load(owner + ranks, mask=ranks < R, other=0)
            fac = tl.load(f + rows[:, None] * sfm + col[None, :],
                          mask=(rows[:, None] < M) & (ranks[None, :] < R), other=0.0)
            acc = acc * fac.to(tl.float32)
        tl.store(h + rows[:, None] * shm + ranks[None, :], acc.to(h.dtype.element_ty),
                 mask=(rows[:, None] < M) & (ranks[None, :] < R))

    @triton.jit
    def up(h, u, table, y, bias, M, shm, sum_, sym,
           ACCUMULATE: tl.constexpr, HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BW: tl.constexpr):
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        tile = tl.program_id(1)
        start = tl.load(table + tile * 5)
        stop = tl.load(table + tile * 5 + 1)
        rank0 = tl.load(table + tile * 5 + 2)
        width = tl.load(table + tile * 5 + 3)
        urow = tl.load(table + tile * 5 + 4)
        cols = start + tl.arange(0, BN)
        rs = tl.arange(0, BW)
        ht = tl.load(h + rows[:, None] * shm + rank0 + rs[None, :],
                     mask=(rows[:, None] < M) & (rs[None, :] < width), other=0.0)
        ut = tl.load(u + (urow + cols - start)[:, None] * sum_ + rs[None, :],
                     mask=(cols[:, None] < stop) & (rs[None, :] < width), other=0.0)
        acc = tl.dot(ht, tl.trans(ut))
        inside = (rows[:, None] < M) & (cols[None, :] < stop)
        yp = y + rows[:, None] * sym + cols[None, :]
        if ACCUMULATE:
            acc += tl.load(yp, mask=inside, other=0.0).to(tl.float32)
        if HAS_BIAS:
            acc += tl.load(bias + cols, mask=cols < stop, other=0.0).to(tl.float32)[None, :]
        tl.store(yp, acc.to(y.dtype.element_ty), mask=inside)

    return triton, down, up


class PackedUp:
    """Every slice's `s B` stacked into one zero-padded `[sum of slice widths, width]` matrix, and
    column-tile tables `(first column, slice stop, first rank, ranks, first row of U)`.

    Slices that overlap (a LoRA on the whole `qkv` beside one on `q` only) go to different tables,
    one launch each, so no two programs of a launch add into the same output element.
    """

    def __init__(self, slices, out_features: int, device, dtype):
        width = max(s.ranks.stop - s.ranks.start for s in slices)
        self.width = max(16, 1 << (width - 1).bit_length())  # tl.dot needs K >= 16, a power of two
        self.u = torch.zeros(sum(s.stop - s.start for s in slices), self.width, device=device, dtype=dtype)
        waves: list[tuple[list, list]] = []   # (tiles, output spans) per launch
        first = 0
        for s in slices:
            ranks = s.ranks.stop - s.ranks.start
            self.u[first:first + s.stop - s.start, :ranks] = s.up.to(device, dtype)
            tiles = [(c, s.stop, s.ranks.start, ranks, first + c - s.start) for c in range(s.start, s.stop, BLOCK_N_UP)]
            first += s.stop - s.start
            free = [w for w in waves if all(s.stop <= a or b <= s.start for a, b in w[1])]
            if not free:
                waves.append(([], []))
                free = waves[-1:]
            free[0][0].extend(tiles)
            free[0][1].append((s.start, s.stop))
        self.tables = tuple(torch.tensor(t, dtype=torch.int32, device=device) for t, _ in waves)


def masked_down(x2: torch.Tensor, down: torch.Tensor, f: torch.Tensor | None, owner: torch.Tensor) -> torch.Tensor:
    """`h = (x A^T) * F[:, owner]`: `[M, R]` in x's dtype."""
    triton, kernel, _ = _kernels()
    m, k = x2.shape
    r = down.shape[0]
    h = torch.empty(m, r, device=x2.device, dtype=x2.dtype)
    grid = (triton.cdiv(m, BLOCK_M_DOWN), triton.cdiv(r, BLOCK_R_DOWN))
    fm = f if f is not None else h
    kernel[grid](x2, down, fm, owner, h, m, k, r, fm.shape[-1], x2.stride(0), fm.stride(0), h.stride(0),
                 HAS_MASK=f is not None, BM=BLOCK_M_DOWN, BR=BLOCK_R_DOWN, BK=BLOCK_K, num_warps=NUM_WARPS_DOWN)
    return h


def add_up(y2: torch.Tensor, h: torch.Tensor, packed: PackedUp) -> None:
    """`y[:, slice] += h[:, ranks] U_slice^T` for every slice, in place, one launch per table."""
    _launch_up(y2, h, packed, None, True)


def write_up(y2: torch.Tensor, h: torch.Tensor, packed: PackedUp, bias: torch.Tensor | None) -> None:
    """`y = bias + h U^T` (no read of `y`); needs one table whose slices cover every column."""
    _launch_up(y2, h, packed, bias, False)


def _launch_up(y2, h, packed, bias, accumulate):
    triton, _, kernel = _kernels()
    m = y2.shape[0]
    for table in packed.tables:
        kernel[(triton.cdiv(m, BLOCK_M_UP), table.shape[0])](
            h, packed.u, table, y2, h if bias is None else bias, m, h.stride(0), packed.u.stride(0), y2.stride(0),
            ACCUMULATE=accumulate, HAS_BIAS=bias is not None, BM=BLOCK_M_UP, BN=BLOCK_N_UP, BW=packed.width,
            num_warps=NUM_WARPS_UP)
