"""The LoRA up projection fused into the GELU after an MLP-in layer (`freefuse_core.fused`)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from freefuse_core import up_gelu

PACK = Path(__file__).resolve().parents[2]


def unfused(y, h, up):
    """What the layer and the GELU do without fusion: `y += h up^T`, then the GELU."""
    rows = y.reshape(-1, y.shape[-1]).clone()
    rows.addmm_(h, up.t())
    return torch.nn.functional.gelu(rows, approximate="tanh").view(y.shape)


def test_up_gelu_on_a_column_slice_equals_adding_then_the_gelu():
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(2, 7, 30, generator=g, dtype=torch.float64)
    y, h, up = wide[..., 12:], torch.randn(14, 5, generator=g, dtype=torch.float64), \
        torch.randn(18, 5, generator=g, dtype=torch.float64)
    got = up_gelu(y, h, up)
    assert got.shape == y.shape and got.dtype == y.dtype
    torch.testing.assert_close(got, unfused(y, h, up))
    assert not torch.allclose(got, torch.nn.functional.gelu(y, approximate="tanh"))


def test_up_gelu_refuses_shapes_that_do_not_fit():
    with pytest.raises(ValueError, match="do not fit"):
        up_gelu(torch.zeros(3, 8), torch.zeros(4, 2), torch.zeros(8, 2))
    with pytest.raises(ValueError, match="do not fit"):
        up_gelu(torch.zeros(3, 8), torch.zeros(3, 2), torch.zeros(8, 3))


KERNEL_CHECK = """
import torch
from freefuse_core import fused
g = torch.Generator().manual_seed(1)
worst = {}
for dtype in (torch.float32, torch.float16):
    for rows, columns, rank, wide in ((70, 300, 24, 340), (64, 128, 80, 128), (5, 20, 3, 20)):
        full = torch.randn(rows, wide, generator=g).to(dtype)
        y = full[:, wide - columns:]
        h = (torch.randn(rows, rank, generator=g) * 0.3).to(dtype)
        up = (torch.randn(columns, rank, generator=g) * 0.3).to(dtype)
        got = fused._triton_up_gelu(y, h, up)
        ref = fused.up_gelu(y, h, up)
        assert got.shape == y.shape and got.dtype == dtype
        worst[str(dtype)] = max(worst.get(str(dtype), 0.0), float((got.float() - ref.float()).abs().max()))
print(worst)
assert worst["torch.float32"] < 1e-5 and worst["torch.float16"] < 4e-3, worst
"""


def test_triton_kernel_matches_torch_in_the_interpreter():
    """The CUDA kernel, run by Triton's CPU interpreter: odd row counts, a strided column slice, ranks
    below and above one rank block, float32 and float16, against the float32 torch sum. (The interpreter
    cannot do bfloat16 dots; `bench/flux_bench.py` checks the bfloat16 kernel on the GPU.)"""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(PACK)}
    done = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
