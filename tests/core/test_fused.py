"""The LoRA up projection fused into the GELU after an MLP-in layer (`freefuse_core.fused`)."""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from freefuse_core import fused, up_gelu, up_rms_norm

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


def flux_q(y, heads):
    """q of a Flux `qkv` output `[B, L, 3 H D]`, as the block splits it: `[B, H, L, D]`, strided."""
    return y.view(y.shape[0], y.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_up_rms_norm_equals_the_norm_module_on_the_sum(dtype):
    """Per head: `RMSNorm(q + h up^T)`; eps None is the dtype's epsilon as in torch.nn.RMSNorm (for
    bfloat16 0.0078, large enough to matter)."""
    g = torch.Generator().manual_seed(2)
    batch, heads, tokens, dim, rank = 2, 3, 5, 8, 4
    y = (torch.randn(batch, tokens, 3 * heads * dim, generator=g) * 0.1).to(dtype)
    h, up = torch.randn(batch * tokens, rank, generator=g).to(dtype), (torch.randn(heads * dim, rank, generator=g)
                                                                       * 0.05).to(dtype)
    norm = torch.nn.RMSNorm(dim, eps=None, dtype=torch.float32)
    torch.nn.init.uniform_(norm.weight, 0.5, 1.5, generator=g)
    q = flux_q(y, heads)
    total = q.float() + (h.float() @ up.float().t()).view(batch, tokens, heads, dim).transpose(1, 2)
    expected = torch.nn.RMSNorm(dim, eps=torch.finfo(dtype).eps)
    expected.load_state_dict(norm.state_dict())
    got = up_rms_norm(q, h, up, norm.weight.to(dtype), norm.eps)
    assert got.shape == q.shape and got.is_contiguous() and got.dtype == dtype
    torch.testing.assert_close(got.float(), expected(total), **({} if dtype == torch.float32 else
                                                                dict(atol=2e-2, rtol=2e-2)))
    assert not torch.allclose(got.float(), expected(q.float()), atol=1e-3)
    with pytest.raises(ValueError, match="do not fit"):
        up_rms_norm(q, h[1:], up, None, None)


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
        first = fused._triton_up_gelu(y, h, up, *fused._rows_view(y))   # through the autotuner
        got = fused._triton_up_gelu(y, h, up, *fused._rows_view(y))     # straight to the config it chose
        assert torch.equal(first, got)
        ref = fused.up_gelu(y, h, up)
        assert got.shape == y.shape and got.dtype == dtype
        worst[str(dtype)] = max(worst.get(str(dtype), 0.0), float((got.float() - ref.float()).abs().max()))
    for batch, heads, tokens, dim, rank in ((1, 3, 37, 16, 24), (2, 2, 20, 32, 80), (2, 2, 16, 32, 64)):
        y = torch.randn(batch, tokens, 3 * heads * dim + 8, generator=g).to(dtype)
        k = y[..., heads * dim:2 * heads * dim].unflatten(-1, (heads, dim)).transpose(1, 2)
        h = (torch.randn(batch * tokens, rank, generator=g) * 0.3).to(dtype)
        up = (torch.randn(heads * dim, rank, generator=g) * 0.3).to(dtype)
        w = (torch.rand(dim, generator=g) + 0.5).to(dtype)
        first = fused._triton_up_rms_norm(k, h, up, w, 1e-6)
        got, ref = fused._triton_up_rms_norm(k, h, up, w, 1e-6), fused.up_rms_norm(k, h, up, w, 1e-6)
        assert torch.equal(first, got)
        assert got.shape == k.shape and got.is_contiguous() and got.dtype == dtype
        key = "norm " + str(dtype)
        worst[key] = max(worst.get(key, 0.0), float((got.float() - ref.float()).abs().max()))
print(worst)
assert worst["torch.float32"] < 1e-5 and worst["torch.float16"] < 4e-3, worst
assert worst["norm torch.float32"] < 1e-5 and worst["norm torch.float16"] < 4e-3, worst
assert len(fused._TUNED) == 12, fused._TUNED   # each kernel, dtype and shape tuned once
"""


def test_triton_kernel_matches_torch_in_the_interpreter():
    """The CUDA kernels, run by Triton's CPU interpreter: odd row counts, strided column slices and heads,
    ranks below and above one rank block, float32 and float16, against the float32 torch sums. (The
    interpreter cannot do bfloat16 dots; `bench/flux_bench.py` checks the bfloat16 kernels on the GPU.)"""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(PACK)}
    done = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def resources(kernel, arch: int, constants: dict) -> list[tuple[dict, int, int, int]]:
    """`(config, registers, stack bytes, 128-bit global loads)` of `kernel` built for sm_`arch` in bfloat16,
    per autotune config, from its PTX and `cuobjdump --dump-resource-usage` (shipped with Triton; no GPU
    needed). Pointers and integers are marked divisible by 16, as Triton specializes them at launch for
    Flux's shapes (aligned slices, widths and token counts that are multiples of 16)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jit = kernel.fn   # autotuner -> jit function
    floats, pointers = ("eps", "gelu_c"), ("y", "h", "up", "w", "out")
    signature = {p.name: "constexpr" if p.is_constexpr else "*bf16" if p.name in pointers else
                 "fp32" if p.name in floats else "i32" for p in jit.params}
    aligned = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(jit.params)
               if signature[p.name] not in ("constexpr", "fp32")}
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    found = []
    for config in kernel.configs:
        built = triton.compile(ASTSource(jit, signature, constexprs={**constants, **config.kwargs}, attrs=aligned),
                               target=GPUTarget("cuda", arch, 32),
                               options={"num_warps": config.num_warps, "num_stages": config.num_stages})
        with tempfile.TemporaryDirectory() as folder:
            cubin = Path(folder) / "kernel.cubin"
            cubin.write_bytes(built.asm["cubin"])
            usage = subprocess.run([str(tools / "cuobjdump"), "--dump-resource-usage", str(cubin)],
                                   capture_output=True, text=True, check=True).stdout
        registers, stack = (int(re.search(rf"{key}:(\d+)", usage).group(1)) for key in ("REG", "STACK"))
        found.append((config.kwargs, registers, stack, len(re.findall(r"ld\.global(\.\w+)*\.v4", built.asm["ptx"]))))
    return found


@pytest.mark.parametrize("arch", [86, 90])
@pytest.mark.parametrize("even", [True, False])
def test_kernels_build_for_the_gpus_users_have_without_spilling(arch, even):
    """Built for sm_86 (RTX 30xx) and sm_90 (H100/H200), every autotune config, masked and not: 128-bit
    loads, no register spills and at most 128 registers a thread (two 8-warp programs fit an SM). The
    kernels are memory-bound, so this is what keeps them near the speed of the GELU or norm alone."""
    from freefuse_core import fused_kernels

    for kernel, constants in ((fused_kernels.up_gelu, {"RANK": 64, "BR": 64}),
                              (fused_kernels.up_rms_norm, {"RANK": 64, "BR": 64, "D": 128})):
        for config, registers, stack, wide_loads in resources(kernel, arch, {**constants, "EVEN": even}):
            assert stack == 0 and registers <= 128 and wide_loads > 0, (kernel.fn.__name__, config, registers,
                                                                        stack, wide_loads)


class _Compiled:
    """A stand-in compiled kernel whose launcher takes exactly `count` kernel arguments, as Triton's does."""

    function, packed_metadata = "function", "metadata"

    def __init__(self, count: int):
        self.count, self.launches = count, []

    def run(self, grid_x, grid_y, grid_z, stream, function, metadata, launch_metadata, enter, leave, *args):
        if len(args) != self.count:
            raise TypeError(f"launch takes {self.count} arguments, got {len(args)}")
        self.launches.append(((grid_x, grid_y, grid_z), stream, function, metadata, args))


def test_direct_launch_learns_the_launchers_argument_form_or_gives_way_to_the_jit_function(monkeypatch):
    """Recent Triton launchers take every argument, constants after the rest in parameter order; older ones
    the non-constant ones alone. `_direct` finds the form on the first launch and keeps it, launching on the
    current stream of the first argument's device; a launcher that takes neither is dropped, so the JIT
    function launches from then on."""
    hooks = SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None)
    monkeypatch.setattr(fused, "_runtime", lambda: fused._Runtime(stream=lambda index: 100 + index, knobs=hooks))
    y = SimpleNamespace(device=SimpleNamespace(index=1))
    for count, form, args in ((4, "all", (y, 2, 64, 32)), (2, "runtime", (y, 2))):
        entry = [_Compiled(count), None, (64, 32)]
        for _ in range(2):
            assert fused._direct(entry, (3,), (y, 2))
        assert entry[1] == form and entry[0].launches == [((3, 1, 1), 101, "function", "metadata", args)] * 2
    entry = [_Compiled(3), None, (64, 32)]
    assert not fused._direct(entry, (3,), (y, 2))
    assert entry[0] is None


def test_a_launch_reuses_a_compiled_kernel_only_for_the_same_specialization():
    """What Triton compiles a kernel for: 16-byte aligned pointers, integers that are 1 or multiples of 16
    or beyond 32 bits, dtypes. A column slice one element off, or another row count class, is another kernel."""
    y = torch.zeros(4, 64, dtype=torch.bfloat16)
    base = fused._specialization((y, 64, 4096))
    assert fused._specialization((y[:, 8:], 64, 512)) == base
    assert fused._specialization((y[:, 1:], 64, 4096)) != base
    assert fused._specialization((y, 1, 4096)) != base
    assert fused._specialization((y, 64, 4100)) != base
    assert fused._specialization((y, 64, 2**31)) != fused._specialization((y, 64, 2**31 - 16))
    assert fused._specialization((y.float(), 64, 4096)) != base


def test_a_kernel_that_cannot_be_built_here_is_logged_once_and_left_to_torch(monkeypatch, caplog):
    """No C compiler for Triton's launcher, say: the first build's error is a logged warning and the kernel is
    marked unbuilt (its op then runs in torch); the same error from a kernel built here before is raised."""
    class Broken:
        def __getitem__(self, grid):
            raise RuntimeError("Failed to find C compiler")

    monkeypatch.setattr(fused, "_tuners", lambda: (Broken(), Broken()))
    monkeypatch.setattr(fused, "_TUNED", {})
    monkeypatch.setattr(fused, "UNBUILT", {})
    with caplog.at_level("WARNING", logger=fused.__name__):
        assert fused._launch(1, (24, 64, torch.bfloat16), lambda bm, bn: (1,), (), {}) is False
    assert "C compiler" in fused.UNBUILT[1] and 0 not in fused.UNBUILT
    assert "up_rms_norm could not be built" in caplog.text
    fused._TUNED[(0, (12288, 64, torch.bfloat16))] = object()
    with pytest.raises(RuntimeError, match="C compiler"):
        fused._launch(0, (3072, 64, torch.bfloat16), lambda bm, bn: (1,), (), {})
    assert 0 not in fused.UNBUILT
