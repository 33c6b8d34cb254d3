"""A LoRA up projection fused into the op that reads the layer's output next.

In Flux, the MLP columns of `img_mlp.0`, `txt_mlp.0` and single-block `linear1` feed a tanh GELU
and nothing else, and the q and k columns of `*_attn.qkv` and `linear1` feed an RMS norm per head.
For those columns, with `h = F (x A^T)` `[tokens, R]` and `U = s B` `[columns, R]`,

    up_gelu:      out = gelu_tanh(y + h U^T)
    up_rms_norm:  out = (y + h U^T) / sqrt(mean_D((y + h U^T)^2) + eps) * w     (per head of D columns)

are computed in one pass over `y`: the GELU and the norm read `y` anyway, so the term costs a
rank-`R` dot per output tile instead of a second read and write of `y` (`y += h U^T`, then the
op). On CUDA (compute capability 8.0 on) in half precision each is one Triton kernel; otherwise the
same sum in torch. A kernel that cannot be built on this machine (no C compiler for Triton's launcher,
say) is logged once as a warning, and that op runs in torch from then on.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import math
from dataclasses import dataclass

import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
GELU_C = math.sqrt(2.0 / math.pi)
log = logging.getLogger(__name__)


def up_gelu(y: torch.Tensor, h: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`gelu_tanh(y + h up^T)` for `y` `[..., C]` (a column slice of a wider output is fine), `h`
    `[rows, R]` with `rows` = the product of `y`'s leading dims, `up` `[C, R]`. A new tensor shaped
    like `y`, in `y`'s dtype; the sum and the GELU are evaluated in at least float32."""
    if h.shape[0] * y.shape[-1] != y.numel() or up.shape != (y.shape[-1], h.shape[1]):
        raise ValueError(f"up_gelu: output {tuple(y.shape)}, rank input {tuple(h.shape)} and up "
                         f"{tuple(up.shape)} do not fit")
    grid = _rows_view(y) if _triton_can(y, 0) else None
    out = None if grid is None else _triton_up_gelu(y, h, up, *grid)
    if out is not None:
        return out
    wide = torch.promote_types(y.dtype, torch.float32)
    rows = y.reshape(-1, y.shape[-1]).to(wide) + h.to(wide) @ up.to(wide).t()
    return torch.nn.functional.gelu(rows, approximate="tanh").to(y.dtype).view(y.shape)


def up_rms_norm(y: torch.Tensor, h: torch.Tensor, up: torch.Tensor, weight: torch.Tensor | None,
                eps: float | None) -> torch.Tensor:
    """`rms_norm(y + h up^T) * weight` over the last dim, for `y` `[B, H, L, D]` (q or k: heads of
    `D` columns, any strides), `h` `[B * L, R]` (token-major), `up` `[H * D, R]`. `eps` None is the
    dtype's epsilon, as in `torch.nn.RMSNorm`. A new contiguous `[B, H, L, D]` tensor in `y`'s dtype."""
    batch, heads, tokens, dim = y.shape
    if h.shape[0] != batch * tokens or up.shape != (heads * dim, h.shape[1]) \
            or (weight is not None and weight.shape != (dim,)):
        raise ValueError(f"up_rms_norm: heads {tuple(y.shape)}, rank input {tuple(h.shape)}, up {tuple(up.shape)} "
                         f"and weight {None if weight is None else tuple(weight.shape)} do not fit")
    eps = torch.finfo(y.dtype).eps if eps is None else eps
    out = None
    if _triton_can(y, 1) and y.stride(-1) == 1 and dim >= 16 and dim & (dim - 1) == 0:
        out = _triton_up_rms_norm(y, h, up, weight, eps)
    if out is not None:
        return out
    wide = torch.promote_types(y.dtype, torch.float32)
    delta = (h.to(wide) @ up.to(wide).t()).view(batch, tokens, heads, dim).transpose(1, 2)
    total = y.to(wide) + delta
    out = total * torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + eps)
    return (out if weight is None else out * weight.to(wide)).to(y.dtype).contiguous()


def _triton_can(y: torch.Tensor, kernel: int) -> bool:
    """Kernel `kernel` (0 GELU, 1 norm) runs on CUDA GPUs of compute capability 8.0 or newer (the architectures
    they are built and checked for) in half precision, unless it could not be built here; float32 stays in
    torch, whose matmuls do not drop to TF32 as Triton's dot would."""
    return (y.is_cuda and HAS_TRITON and kernel not in UNBUILT and y.dtype in (torch.bfloat16, torch.float16)
            and _capability(y.device) >= (8, 0))


@functools.cache
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def _rows_view(y: torch.Tensor):
    """`(rows, row stride)` where `y` is a 2-D grid of rows with unit column stride, else None."""
    if y.stride(-1) != 1:
        return None
    stride = y.stride(-2) if y.ndim > 1 else y.shape[-1]
    for dim in range(y.ndim - 2):
        if y.stride(dim) != y.stride(dim + 1) * y.shape[dim + 1]:
            return None
    return y.numel() // y.shape[-1], stride


def _triton_up_gelu(y: torch.Tensor, h: torch.Tensor, up: torch.Tensor, rows: int, y_stride: int) -> torch.Tensor:
    columns, rank = up.shape
    out = torch.empty_like(y, memory_format=torch.contiguous_format)
    h, up = _rows_contiguous(h), _rows_contiguous(up)
    block_r, (even_m, even_n) = _rank_block(rank), _kernel_module().GELU_EVEN
    launched = _launch(0, (columns, rank, y.dtype), lambda bm, bn: (_cdiv(rows, bm) * _cdiv(columns, bn),),
                       (y, h, up, out, rows, columns, y_stride, h.stride(0), up.stride(0), columns, GELU_C),
                       dict(RANK=rank, BR=block_r,
                            EVEN=rows % even_m == 0 and columns % even_n == 0 and rank % block_r == 0))
    return out if launched else None


def _triton_up_rms_norm(y, h, up, weight, eps):
    batch, heads, tokens, dim = y.shape
    out = torch.empty_like(y, memory_format=torch.contiguous_format)
    h, up = _rows_contiguous(h), _rows_contiguous(up)
    weight = torch.ones(dim, device=y.device, dtype=y.dtype) if weight is None else weight.contiguous()
    rank = up.shape[1]
    block_r = _rank_block(rank)
    launched = _launch(1, (heads, rank, y.dtype), lambda bm, bn: (batch, _cdiv(tokens, bm), heads),
                       (y, h, up, weight, out, tokens, heads, y.stride(0), y.stride(1), y.stride(2), h.stride(0),
                        up.stride(0), float(eps)),
                       dict(RANK=rank, D=dim, BR=block_r,
                            EVEN=tokens % _kernel_module().NORM_EVEN == 0 and rank % block_r == 0))
    return out if launched else None


_TUNED: dict = {}     # (kernel, autotune key) -> the config its autotuner chose, for the launches after the first
_COMPILED: dict = {}  # (kernel, autotune key, constants, specialization) -> [compiled kernel, its argument
#     form, its constants in the kernel's parameter order]
UNBUILT: dict = {}    # kernel -> why it could not be built on this machine; torch runs its op from then on


def _launch(index: int, key: tuple, grid_of, args: tuple, constants: dict) -> bool:
    """Kernel `index` through its autotuner the first time for `key`, through the JIT function with the config
    it chose the first time for each specialization of the arguments, then straight to that compiled kernel:
    the autotuner's and the JIT function's bookkeeping cost tens of microseconds a launch, on the host that
    a masked step already keeps busy. False where the kernel's first build failed (logged; see UNBUILT)."""
    config = _TUNED.get((index, key))
    if config is None:
        try:
            tuner = _tuners()[index]
            tuner[lambda meta: grid_of(meta["BM"], meta.get("BN"))](*args, **constants)
        except Exception as error:   # Triton's compiler and launcher build: anything a toolchain can raise
            if any(i == index for i, _ in _TUNED):
                raise                # built here before: a real failure, not the machine
            UNBUILT[index] = f"{type(error).__name__}: {error}"
            log.warning("FreeFuse: the Triton kernel %s could not be built on this machine (%s); its LoRA terms "
                        "are added in torch from now on, a little slower.", ("up_gelu", "up_rms_norm")[index],
                        UNBUILT[index])
            return False
        _TUNED[(index, key)] = tuner.best_config
        return True
    grid = grid_of(config.kwargs["BM"], config.kwargs.get("BN"))
    spec = (index, key, tuple(constants.values()), _specialization(args))   # each caller names them in one order
    compiled = _COMPILED.get(spec)
    if compiled is not None and compiled[0] is not None and _direct(compiled, grid, args):
        return True
    tuner = _tuners()[index]
    named = {**constants, **config.kwargs}
    kernel = tuner.fn[grid](*args, **named, num_warps=config.num_warps, num_stages=config.num_stages)
    if compiled is None and hasattr(kernel, "packed_metadata") and _runtime() is not None:   # not the interpreter's
        _COMPILED[spec] = [kernel, None, tuple(named[name] for name in tuner.fn.arg_names[len(args):])]
    return True


def _tuners() -> tuple:
    return _kernel_module().up_gelu, _kernel_module().up_rms_norm


def _specialization(args: tuple) -> tuple:
    """What Triton specializes a compiled kernel on, per argument: a tensor's dtype, device and 16-byte
    alignment; an integer equal to 1, divisible by 16, or beyond 32 bits; a float's type."""
    return tuple([(arg.dtype, arg.device, arg.data_ptr() % 16 == 0) if isinstance(arg, torch.Tensor)
                  else (arg == 1, arg % 16 == 0, -2**31 <= arg < 2**31) if isinstance(arg, int) else type(arg)
                  for arg in args])


def _direct(compiled: list, grid: tuple, args: tuple) -> bool:
    """Launches `compiled[0]` with `args` and then its constants (`compiled[2]`, in the kernel's parameter
    order: recent Triton passes them all; older ones the non-constant arguments alone: the first launch finds
    out and remembers the form in `compiled[1]`), through the compiled kernel's own launcher on the current
    stream, as its `kernel[grid](...)` would. When neither form is accepted, False, and the JIT function
    launches from then on."""
    kernel, form, constants = compiled
    grid = (*grid, 1, 1)[:3]   # a compiled kernel's launcher reads all three grid sizes
    runtime = _runtime()
    stream = runtime.stream(args[0].device.index)
    hooks = runtime.knobs.launch_enter_hook, runtime.knobs.launch_exit_hook   # set by Triton's profilers
    for each in ("all", "runtime") if form is None else (form,):
        values = (*args, *constants) if each == "all" else args
        try:
            meta = None if hooks[0] is None else kernel.launch_metadata(grid, stream, *values)
            kernel.run(*grid, stream, kernel.function, kernel.packed_metadata, meta, *hooks, *values)
        except TypeError:   # raised while the launcher parses its arguments, before any launch
            continue
        compiled[1] = each
        return True
    compiled[0] = None
    return False


@dataclass(frozen=True)
class _Runtime:
    stream: object   # device index -> its current CUDA stream, as Triton's launches read it
    knobs: object    # `triton.knobs.runtime`: the launch hooks


@functools.cache
def _runtime() -> _Runtime | None:
    """What a compiled kernel's launch reads besides its arguments; None on a Triton without `knobs` (before
    3.4), whose kernels then launch through the JIT function."""
    triton = _kernel_module().triton
    knobs = getattr(triton, "knobs", None)
    return None if knobs is None else _Runtime(triton.runtime.driver.active.get_current_stream, knobs.runtime)


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """`t` where its rows are already unit-stride (a column slice is fine), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


@functools.cache
def _rank_block(rank: int) -> int:
    """The rank block of the kernels' dot: the largest of 64, 32, 16 that divides the rank (no masks
    then), else the power of two above it, at most 64."""
    return next((b for b in (64, 32, 16) if rank % b == 0), max(16, min(64, 1 << (rank - 1).bit_length())))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def _kernel_module():
    """`fused_kernels`, imported on first use: importing Triton takes time, and CPU runs never need it."""
    from . import fused_kernels
    return fused_kernels
