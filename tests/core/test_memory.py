"""Stage 1 at a 64 x 64 token grid (1024 px) with 24 heads allocates no tensor of N*N elements."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from freefuse_core import subject_maps


class LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_n_squared_tensor_at_1024px():
    grid, heads, dim, txt_len = (64, 64), 24, 64, 16
    n = grid[0] * grid[1]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, heads, txt_len + n, dim, generator=g)
    k = torch.randn(1, heads, txt_len + n, dim, generator=g)
    sets = [[1, 2], [5], [6], [7, 8, 9], [10], [12]]   # 6 subjects: 6 x 40 salient rows, more than N / heads
    with LargestTensor() as probe:
        maps = subject_maps(q, k, txt_len, grid, sets, chunk=512)
    assert maps.shape == (1, 6, n)
    assert probe.largest < n * n, f"a tensor of {probe.largest} elements (N^2 = {n * n})"
    assert probe.largest > n * n // 2   # the probe sees the chunked per-head logits: it can fail
