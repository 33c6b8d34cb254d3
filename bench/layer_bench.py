"""Per-layer cost of the masked LoRA term at FLUX.1-dev's shapes (1024 px: 4096 image + 512 text tokens).

    python3 bench/layer_bench.py            # on a CUDA machine; prints one row per layer kind and a step total

For each linear layer kind of a Flux step: the base GEMM (`F.linear`, bf16) and the LoRA term of two
rank-`r` LoRAs with binary masks through the torch path (mm, mask, addmm_ per slice) and the Triton
path (two launches). Times are medians from `triton.testing.do_bench`; the step total weights each
kind by how often it runs per step (19 double blocks, 38 single blocks). Needs no ComfyUI.
"""
import argparse
import sys
from pathlib import Path

import torch
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from freefuse_core import kernels  # noqa: E402
from freefuse_core.lowrank import LowRankTerm, MaskedLowRank  # noqa: E402

H, MLP = 3072, 12288
IMG, TXT = 4096, 512
KINDS = {  # name: (tokens, in, out, output parts, layers per step)
    "img qkv": (IMG, H, 3 * H, 3, 19), "img proj": (IMG, H, H, 1, 19),
    "img mlp.0": (IMG, H, MLP, 1, 19), "img mlp.2": (IMG, MLP, H, 1, 19),
    "txt qkv": (TXT, H, 3 * H, 3, 19), "txt proj": (TXT, H, H, 1, 19),
    "txt mlp.0": (TXT, H, MLP, 1, 19), "txt mlp.2": (TXT, MLP, H, 1, 19),
    "single linear1": (IMG + TXT, H, 3 * H + MLP, 4, 38), "single linear2": (IMG + TXT, H + MLP, H, 1, 38),
}


def layer(tokens, d_in, d_out, parts, rank, loras, device):
    bounds = [0, H, 2 * H, 3 * H][:parts] + [d_out]
    terms = [LowRankTerm(l, torch.randn(rank, d_in) / d_in ** 0.5, torch.randn(stop - start, rank) * 0.01, start)
             for l in range(loras) for start, stop in zip(bounds[:-1], bounds[1:])]
    layer = MaskedLowRank(terms, d_out)
    fast, slow = layer.to(device, torch.bfloat16), layer.to(device, torch.bfloat16, fused=False)
    x = torch.randn(1, tokens, d_in, device=device, dtype=torch.bfloat16)
    w = torch.randn(d_out, d_in, device=device, dtype=torch.bfloat16) / d_in ** 0.5
    b = torch.zeros(d_out, device=device, dtype=torch.bfloat16)
    owner = torch.randint(0, loras + 1, (tokens,), device=device)
    mask = torch.nn.functional.one_hot(owner, loras + 1)[None, :, :loras].to(torch.bfloat16).contiguous()
    return fast, slow, x, w, b, mask


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--loras", type=int, default=2)
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    totals = {"base": 0.0, "torch": 0.0, "triton": 0.0}
    print(f"{'layer':16s} {'base ms':>8s} {'torch +%':>9s} {'triton +%':>10s} {'err':>8s}")
    for name, (tokens, d_in, d_out, parts, count) in KINDS.items():
        fast, torch_path, x, w, b, mask = layer(tokens, d_in, d_out, parts, args.rank, args.loras, device)
        base = triton.testing.do_bench(lambda: torch.nn.functional.linear(x, w, b), return_mode="median")
        slow = triton.testing.do_bench(lambda: torch_path.add_to(torch.nn.functional.linear(x, w, b), x, mask),
                                       return_mode="median")
        want = torch_path.add_to(torch.nn.functional.linear(x, w, b), x, mask).float()
        quick = triton.testing.do_bench(lambda: fast.add_to(torch.nn.functional.linear(x, w, b), x, mask),
                                        return_mode="median")
        got = fast.add_to(torch.nn.functional.linear(x, w, b), x, mask).float()
        base_y = torch.nn.functional.linear(x, w, b).float()
        err = float((got - want).norm() / (want - base_y).norm())
        totals["base"] += count * base
        totals["torch"] += count * slow
        totals["triton"] += count * quick
        print(f"{name:16s} {base:8.3f} {100 * (slow / base - 1):9.1f} {100 * (quick / base - 1):10.1f} {err:8.1e}")
    print(f"per step: base {totals['base']:.1f} ms, with LoRA term: torch +{100 * (totals['torch'] / totals['base'] - 1):.1f} %, "
          f"triton +{100 * (totals['triton'] / totals['base'] - 1):.1f} %")


if __name__ == "__main__":
    main()
