"""On a CUDA machine: the fused kernels launched straight to their compiled kernel give the same output as
through Triton's JIT function, and both match the torch sums, at FLUX.1-dev's bfloat16 shapes (1024 px);
then the host time per launch each way. Exits non-zero on a mismatch.

    python3 bench/fused_check.py
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from freefuse_core import fused  # noqa: E402

H, MLP, HEADS, DIM, RANK = 3072, 12288, 24, 128, 64


def cases(device):
    """`(name, launch, torch reference)` per Flux consumer shape: the GELU after `img_mlp.0`, `txt_mlp.0` and
    `linear1`'s MLP columns, the k norm after `img_attn.qkv` and `linear1`."""
    g = torch.Generator(device=device).manual_seed(0)
    made = []
    for name, tokens, wide, start in (("gelu img mlp.0", 4096, MLP, 0), ("gelu txt mlp.0", 512, MLP, 0),
                                      ("gelu linear1 mlp", 4608, 3 * H + MLP, 3 * H)):
        y = torch.randn(1, tokens, wide, device=device, generator=g).bfloat16()[..., start:start + MLP]
        h = (0.3 * torch.randn(tokens, RANK, device=device, generator=g)).bfloat16()
        up = (0.01 * torch.randn(MLP, RANK, device=device, generator=g)).bfloat16()
        made.append((name, lambda y=y, h=h, up=up: fused.up_gelu(y, h, up), _torch_gelu(y, h, up)))
    for name, tokens, wide in (("k norm img qkv", 4096, 3 * H), ("k norm linear1", 4608, 3 * H + MLP)):
        y = torch.randn(1, tokens, wide, device=device, generator=g).bfloat16()
        k = y[..., H:2 * H].unflatten(-1, (HEADS, DIM)).transpose(1, 2)
        h = (0.3 * torch.randn(tokens, RANK, device=device, generator=g)).bfloat16()
        up = (0.01 * torch.randn(H, RANK, device=device, generator=g)).bfloat16()
        w = (torch.rand(DIM, device=device, generator=g) + 0.5).bfloat16()
        made.append((name, lambda k=k, h=h, up=up, w=w: fused.up_rms_norm(k, h, up, w, 1e-6),
                     _torch_norm(k, h, up, w)))
    return made


def _torch_gelu(y, h, up):
    rows = y.reshape(-1, y.shape[-1]).float() + h.float() @ up.float().t()
    return torch.nn.functional.gelu(rows, approximate="tanh").view(y.shape)


def _torch_norm(k, h, up, w):
    batch, heads, tokens, dim = k.shape
    total = k.float() + (h.float() @ up.float().t()).view(batch, tokens, heads, dim).transpose(1, 2)
    return total * torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + 1e-6) * w.float()


def host_us(launch, repeats: int = 100) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        launch()
    seconds = (time.perf_counter() - start) / repeats
    torch.cuda.synchronize()
    return 1e6 * seconds


def main() -> int:
    device = torch.device("cuda")
    failed = []
    for name, launch, reference in cases(device):
        tuned, jit, direct = launch(), launch(), launch()   # autotuner, JIT function, compiled kernel
        forms = sorted({str(entry[1]) for entry in fused._COMPILED.values()})
        error = float((direct.float() - reference).abs().max())
        same = torch.equal(tuned, jit) and torch.equal(jit, direct)
        print(f"{name:18s} same output all three ways: {same}; max |direct - torch float32| {error:.2e}; "
              f"launch forms {forms}")
        if not same or error > 5e-2:
            failed.append(name)
        direct_us = host_us(launch)
        saved = {spec: list(entry) for spec, entry in fused._COMPILED.items()}
        for entry in fused._COMPILED.values():
            entry[0] = None                           # the JIT function's launch
        jit_us = host_us(launch)
        fused._COMPILED.update(saved)
        print(f"host {name:18s} direct {direct_us:6.1f} us a launch, through the JIT function {jit_us:6.1f} us")
    print("FAIL: " + ", ".join(failed) if failed else "all fused launches agree")
    return 1 if failed else 0


if __name__ == "__main__":
    with torch.inference_mode():
        sys.exit(main())
