"""An experiment: the base GEMM and the LoRA up projection in one Triton kernel, against cuBLAS.

    y = x W^T + b + h U_slice^T        (h = the masked rank intermediate, computed before)

The LoRA segment is one more `tl.dot` per output tile after the main loop over K, so the output
is written once and never read back. Worth it only if the Triton GEMM itself runs about as fast
as cuBLAS at Flux's shapes; this script measures that (python3 bench/triton_gemm.py, CUDA).
"""
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_bench import KINDS  # noqa: E402

CONFIGS = [  # BM, BN, BK, warps, stages
    (128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (128, 128, 64, 4, 4), (128, 128, 64, 8, 4),
    (256, 128, 64, 8, 3), (128, 128, 128, 8, 3), (64, 256, 64, 4, 4),
]


@triton.jit
def fused_linear(x, w, b, h, u, y, M, N, K, R, sxm, swn, shm, sun, sym,
                 HAS_LORA: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                 BW: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    in_group = GROUP_M * num_n
    first_m = (pid // in_group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % size_m
    pid_n = (pid % in_group) // size_m
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    xp = x + rm[:, None] * sxm + rk[None, :]
    wp = w + rn[None, :] * swn + rk[:, None]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for _ in range(0, K // BK):
        acc = tl.dot(tl.load(xp), tl.load(wp), acc)
        xp += BK
        wp += BK
    if HAS_LORA:
        rs = tl.arange(0, BW)
        ht = tl.load(h + rm[:, None] * shm + rs[None, :])
        ut = tl.load(u + rn[None, :] * sun + rs[:, None])
        acc = tl.dot(ht, ut, acc)
    acc += tl.load(b + rn).to(tl.float32)[None, :]
    tl.store(y + rm[:, None] * sym + rn[None, :], acc.to(y.dtype.element_ty))


def run(x, w, b, h, u, config, lora):
    bm, bn, bk, warps, stages = config
    m, k = x.shape
    n = w.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    fused_linear[grid](x, w, b, h, u, y, m, n, k, h.shape[1], x.stride(0), w.stride(0), h.stride(0), u.stride(0),
                       y.stride(0), HAS_LORA=lora, BM=bm, BN=bn, BK=bk, BW=h.shape[1], GROUP_M=8,
                       num_warps=warps, num_stages=stages)
    return y


def main():
    torch.manual_seed(0)
    dev, dt = torch.device("cuda"), torch.bfloat16
    print(f"{'layer':16s} {'cuBLAS us':>9s} {'TFLOP/s':>8s} {'best triton plain':>18s} {'fused +LoRA':>12s}  config")
    for name, (tokens, d_in, d_out, _, _) in KINDS.items():
        if tokens < 1024:
            continue
        x = torch.randn(tokens, d_in, device=dev, dtype=dt)
        w = torch.randn(d_out, d_in, device=dev, dtype=dt) / d_in ** 0.5
        b = torch.randn(d_out, device=dev, dtype=dt)
        h = torch.randn(tokens, 64, device=dev, dtype=dt)
        u = torch.randn(d_out, 64, device=dev, dtype=dt) * 0.01
        ref = (x.float() @ w.float().t() + b.float() + h.float() @ u.float().t())
        cublas = triton.testing.do_bench(lambda: torch.nn.functional.linear(x, w, b), return_mode="median")
        best = None
        for config in CONFIGS:
            try:
                got = run(x, w, b, h, u, config, True).float()
            except Exception as error:  # noqa: BLE001  (a config the compiler rejects: out of shared memory)
                print(f"  {name} {config}: {type(error).__name__}")
                continue
            err = float((got - ref).norm() / ref.norm())
            plain = triton.testing.do_bench(lambda: run(x, w, b, h, u, config, False), return_mode="median")
            fused = triton.testing.do_bench(lambda: run(x, w, b, h, u, config, True), return_mode="median")
            if err < 1e-2 and (best is None or fused < best[1]):
                best = (plain, fused, config)
        flops = 2 * tokens * d_in * d_out / cublas / 1e9
        plain, fused, config = best
        print(f"{name:16s} {1000 * cublas:9.1f} {flops:8.0f} {plain / cublas:17.3f}x {fused / cublas:11.3f}x  {config}")


if __name__ == "__main__":
    main()
