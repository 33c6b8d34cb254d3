"""Per-layer cost of the masked LoRA term at FLUX.1-dev's shapes (1024 px: 4096 image + 512 text tokens).

    python3 bench/layer_bench.py            # on a CUDA machine; prints one row per layer kind and a step total
    python3 bench/layer_bench.py --up       # the ways to add the up projection (docs/bench/up_variants.txt)
    python3 bench/layer_bench.py --fused    # terms added in the GELU or q/k norm after the layer instead

For each linear layer kind of a Flux step: the base GEMM (`F.linear`, bf16) and the LoRA term of two
rank-`r` LoRAs with binary masks through the torch path (mm, mask, addmm_ per slice) and the Triton
experiment in `triton_lowrank.py` (two launches; also writing the term first and letting cuBLAS add
`x W^T` with beta = 1). Times are medians from `triton.testing.do_bench`; the step total weights each
kind by how often it runs per step (19 double blocks, 38 single blocks). Needs no ComfyUI.
"""
import argparse
import sys
from pathlib import Path

import torch
import triton.testing

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
import triton_lowrank as kernels  # noqa: E402

from freefuse_core.fused import up_gelu, up_rms_norm  # noqa: E402
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
    slow = MaskedLowRank(terms, d_out).to(device, torch.bfloat16)
    fast = kernels.PackedUp(slow.slices, d_out, device, torch.bfloat16)
    x = torch.randn(1, tokens, d_in, device=device, dtype=torch.bfloat16)
    w = torch.randn(d_out, d_in, device=device, dtype=torch.bfloat16) / d_in ** 0.5
    b = torch.zeros(d_out, device=device, dtype=torch.bfloat16)
    owner = torch.randint(0, loras + 1, (tokens,), device=device)
    mask = torch.nn.functional.one_hot(owner, loras + 1)[None, :, :loras].to(torch.bfloat16).contiguous()
    return fast, slow, x, w, b, mask


def variants(packed, torch_path, x, w, b, mask):
    """name -> callable giving the layer output `x W^T + b + LoRA term`."""
    x2, f = x.view(-1, x.shape[-1]), mask.view(-1, mask.shape[-1])
    linear = torch.nn.functional.linear

    def rmw():
        y = linear(x2, w, b)
        kernels.add_up(y, kernels.masked_down(x2, torch_path.down, f, torch_path.owner), packed)
        return y

    def reorder(down_in_triton):
        def run():
            if down_in_triton:
                h = kernels.masked_down(x2, torch_path.down, f, torch_path.owner)
            else:
                h = torch.mm(x2, torch_path.down.t())
                h.mul_(f.index_select(-1, torch_path.owner))
            y = torch.empty(x2.shape[0], w.shape[0], device=x.device, dtype=x.dtype)
            kernels.write_up(y, h, packed, b)
            return y.addmm_(x2, w.t())
        return run

    out = torch.empty(x2.shape[0], w.shape[0], device=x.device, dtype=x.dtype)
    return {
        "base": lambda: linear(x, w, b),
        "base addmm_ beta=1": lambda: out.addmm_(x2, w.t()),
        "torch": lambda: torch_path.add_to(linear(x, w, b), x, mask),
        "triton rmw": rmw,
        "reorder triton down": reorder(True),
        "reorder cublas down": reorder(False),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--loras", type=int, default=2)
    parser.add_argument("--sweep", action="store_true", help="also try kernel block shapes on two layers")
    parser.add_argument("--parts", action="store_true", help="instead, time each piece of the LoRA term alone")
    parser.add_argument("--up", action="store_true", help="instead, compare ways to add the up projection")
    parser.add_argument("--fused", action="store_true", help="instead, terms added in the GELU or q/k norm after")
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    if args.parts:
        pieces(args, device)
        return
    if args.up:
        up_variants(args, device)
        return
    if args.fused:
        fused_variants(args, device)
        return
    totals = {}
    names = None
    for name, (tokens, d_in, d_out, parts, count) in KINDS.items():
        fast, torch_path, x, w, b, mask = layer(tokens, d_in, d_out, parts, args.rank, args.loras, device)
        runs = variants(fast, torch_path, x, w, b, mask)
        if names is None:
            names = list(runs)
            print(f"{'layer':16s} {'base ms':>8s} " + " ".join(f"{n[:18]:>18s}" for n in names[1:])
                  + "  (% over base; err)")
        want = runs["torch"]().float()
        delta = (want - runs["base"]().float()).norm()
        times = {n: triton.testing.do_bench(fn, return_mode="median") for n, fn in runs.items()}
        errs = {n: float((runs[n]().float() - want).norm() / delta) for n in names[2:]}
        for n, t in times.items():
            totals[n] = totals.get(n, 0.0) + count * t
        print(f"{name:16s} {times['base']:8.3f} " + " ".join(
            f"{100 * (times[n] / times['base'] - 1):10.1f} {errs.get(n, 0):7.0e}" for n in names[1:]))
    print("per step (linear layers only): base %.1f ms; " % totals["base"] + ", ".join(
        f"{n} +{100 * (t / totals['base'] - 1):.1f} %" for n, t in totals.items() if n != "base"))
    if args.sweep:
        sweep(args, device)


def pieces(args, device):
    """Each piece of the LoRA term alone, to see where its time goes."""
    for name in ("img qkv", "img mlp.2", "single linear1"):
        tokens, d_in, d_out, n_parts, _ = KINDS[name]
        packed, path, x, w, b, mask = layer(tokens, d_in, d_out, n_parts, args.rank, args.loras, device)
        x2, f = x.view(-1, d_in), mask.view(-1, mask.shape[-1])
        h = torch.mm(x2, path.down.t())
        y = torch.nn.functional.linear(x2, w, b)
        fo = f.index_select(-1, path.owner)
        hT = torch.empty(path.down.shape[0], tokens, device=device, dtype=x.dtype)
        named = {
            "base": lambda: torch.nn.functional.linear(x2, w, b),
            "mm x A^T": lambda: torch.mm(x2, path.down.t()),
            "mm A x^T (transposed out)": lambda: torch.mm(path.down, x2.t(), out=hT),
            "triton down (masked)": lambda: kernels.masked_down(x2, path.down, f, path.owner),
            "index_select mask": lambda: f.index_select(-1, path.owner),
            "mul_ mask": lambda: h.mul_(fo),
            "addmm_ slices": lambda: [y[:, s.start:s.stop].addmm_(h[:, s.ranks], s.up.t()) for s in path.slices],
            "triton add_up": lambda: kernels.add_up(y, h, packed),
            "triton write_up": lambda: kernels.write_up(y, h, packed, b),
            "y.add_(y) (one output RMW)": lambda: y.add_(y),
            "x.clone() (one input read+write)": lambda: x2.clone(),
        }
        for piece, fn in named.items():
            t = triton.testing.do_bench(fn, return_mode="median")
            print(f"parts {name:15s} {piece:34s} {1000 * t:8.1f} us")


def block_diagonal(path) -> torch.Tensor:
    """`[out, R]`: every slice's stacked `s B` at its rows and rank columns, zeros elsewhere."""
    full = torch.zeros(path.out_features, path.down.shape[0], device=path.down.device, dtype=path.down.dtype)
    for s in path.slices:
        full[s.start:s.stop, s.ranks] = s.up
    return full


def up_variants(args, device):
    """The whole layer (base + term) with the up projection added in different ways, % over base."""
    totals = {}
    for name, (tokens, d_in, d_out, n_parts, count) in KINDS.items():
        _, path, x, w, b, mask = layer(tokens, d_in, d_out, n_parts, args.rank, args.loras, device)
        x2, f = x.view(-1, d_in), mask.view(-1, mask.shape[-1])
        fo = f.index_select(-1, path.owner)
        full = block_diagonal(path)
        linear = torch.nn.functional.linear

        def masked_h():
            return torch.mm(x2, path.down.t()).mul_(fo)

        def slices():
            y, h = linear(x2, w, b), masked_h()
            for s in path.slices:
                y[:, s.start:s.stop].addmm_(h[:, s.ranks], s.up.t())
            return y

        def write_first():
            return torch.addmm(b, masked_h(), full.t()).addmm_(x2, w.t())

        runs = {
            "base": lambda: linear(x2, w, b),
            "torch (now)": lambda: path.add_to(linear(x, w, b), x, mask),
            "unmasked (now)": lambda: path.add_to(linear(x, w, b), x, None),
            "mask cached": slices,
            "one addmm_ block-diag": lambda: linear(x2, w, b).addmm_(masked_h(), full.t()),
            "write term, base beta=1": write_first,
        }
        want = runs["torch (now)"]().float()
        delta = (want - runs["base"]().float()).norm()
        times = {n: triton.testing.do_bench(fn, return_mode="median") for n, fn in runs.items()}
        errs = {n: float((runs[n]().float() - want).norm() / delta)
                for n in runs if n not in ("base", "unmasked (now)")}
        for n, t in times.items():
            totals[n] = totals.get(n, 0.0) + count * t
        print(f"up {name:15s} base {1000 * times['base']:7.1f} us " + " ".join(
            f"| {n} {100 * (t / times['base'] - 1):+6.1f} % ({errs.get(n, 0):.0e})"
            for n, t in times.items() if n != "base"))
    print("up per step (linear layers only): base %.1f ms; " % totals["base"] + ", ".join(
        f"{n} +{100 * (t / totals['base'] - 1):.1f} %" for n, t in totals.items() if n != "base"))


def fused_variants(args, device):
    """A layer and the op after it, % over the base layer + that op: the term added in the layer
    (`add_to`, then the op) or held and added inside the op (`add_to_holding`, then `up_gelu` for the
    MLP columns and `up_rms_norm` for q and k; v is added in the layer either way). The error of each,
    over the size of the term's effect, is against the same layer and op in float32."""
    eps = torch.finfo(torch.bfloat16).eps   # torch.nn.RMSNorm(eps=None) on bfloat16, as in Flux
    weight = torch.rand(128, device=device) + 0.5
    linear = torch.nn.functional.linear
    totals = {}
    cases = {"img mlp.0": "gelu", "txt mlp.0": "gelu", "img qkv": "q/k norm", "txt qkv": "q/k norm",
             "single linear1": "q/k norm + gelu"}
    for name, op in cases.items():
        tokens, d_in, d_out, n_parts, count = KINDS[name]
        _, path, x, w, b, mask = layer(tokens, d_in, d_out, n_parts, args.rank, args.loras, device)
        start = 3 * H if name == "single linear1" else 0
        norms, gelus = ([(0, H), (H, 2 * H)] if "norm" in op else []), ([(start, d_out)] if "gelu" in op else [])

        def heads(y, columns):
            return y[..., columns[0]:columns[1]].unflatten(-1, (-1, 128)).transpose(1, 2)

        def after(y):
            normed = [torch.nn.functional.rms_norm(heads(y, c), (128,), weight.to(y.dtype), eps) for c in norms]
            return normed + [torch.nn.functional.gelu(y[..., c[0]:c[1]], approximate="tanh") for c in gelus]

        def in_op():
            y, held = path.add_to_holding(linear(x, w, b), x, mask, None, norms + gelus)
            normed = [up_rms_norm(heads(y, c), *t, weight.to(y.dtype), eps) for c, t in zip(norms, held)]
            return normed + [up_gelu(y[..., c[0]:c[1]], *t) for c, t in zip(gelus, held[len(norms):])]

        runs = {"base + op": lambda: after(linear(x, w, b)),
                "term in the layer": lambda: after(path.add_to(linear(x, w, b), x, mask)),
                "term in the op": in_op}

        def flat(outs):
            return torch.cat([t.float().flatten() for t in outs])

        x32, w32, b32 = x.float(), w.float(), b.float()
        want = flat(after(path.to(device, torch.float32).add_to(linear(x32, w32, b32), x32, mask.float())))
        effect = (want - flat(after(linear(x32, w32, b32)))).norm()
        err = {n: float((flat(runs[n]()) - want).norm() / effect) for n in ("term in the layer", "term in the op")}
        times = {n: triton.testing.do_bench(fn, return_mode="median") for n, fn in runs.items()}
        for n, t in times.items():
            totals[n] = totals.get(n, 0.0) + count * t
        base = times["base + op"]
        print(f"fused {name:15s} {op:15s} base + op {1000 * base:7.1f} us | " + " | ".join(
            f"{n} {100 * (t / base - 1):+6.1f} %" for n, t in times.items() if n != "base + op")
              + " | error over the term's effect: " + ", ".join(f"{n} {e:.1e}" for n, e in err.items()))
    base = totals["base + op"]
    print("fused per step (these layers and ops only): base + op %.1f ms; " % base + ", ".join(
        f"{n} {100 * (t / base - 1):+.1f} %" for n, t in totals.items() if n != "base + op"))
    host_times(args, device)


def host_times(args, device):
    """Host microseconds per launch (no sync in between; few enough not to fill the launch queue): the fused
    kernels against the torch ops they stand in for, at the text stream's small shapes."""
    import time
    _, path, x, w, b, mask = layer(*KINDS["txt mlp.0"][:4], args.rank, args.loras, device)
    y, (held,) = path.add_to_holding(torch.nn.functional.linear(x, w, b), x, mask, None, [(0, MLP)])
    q = y[..., :H].unflatten(-1, (-1, 128)).transpose(1, 2)
    norm_term = (held[0], torch.zeros(H, held[0].shape[1], device=device, dtype=y.dtype))
    weight = torch.ones(128, device=device, dtype=y.dtype)
    ops = {"torch gelu": lambda: torch.nn.functional.gelu(y, approximate="tanh"),
           "up_gelu (Triton)": lambda: up_gelu(y, *held),
           "torch rms_norm": lambda: torch.nn.functional.rms_norm(q, (128,), weight, 1e-6),
           "up_rms_norm (Triton)": lambda: up_rms_norm(q, *norm_term, weight, 1e-6),
           "torch addmm_": lambda: y.view(-1, MLP).addmm_(held[0], held[1].t())}
    for name, op in ops.items():
        op()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(100):
            op()
        host = (time.perf_counter() - start) / 100
        torch.cuda.synchronize()
        print(f"host {name:22s} {1e6 * host:6.1f} us a launch")


def sweep(args, device):
    for name in ("img qkv", "single linear1", "img mlp.2"):
        tokens, d_in, d_out, parts, _ = KINDS[name]
        for bm_up, bn_up, warps_up, bm_down, warps_down in [(64, 128, 4, 32, 4), (128, 128, 8, 32, 4),
                                                             (64, 256, 8, 64, 4), (128, 64, 4, 16, 2),
                                                             (32, 128, 4, 32, 8)]:
            kernels.BLOCK_M_UP, kernels.BLOCK_N_UP, kernels.NUM_WARPS_UP = bm_up, bn_up, warps_up
            kernels.BLOCK_M_DOWN, kernels.NUM_WARPS_DOWN = bm_down, warps_down
            fast, torch_path, x, w, b, mask = layer(tokens, d_in, d_out, parts, args.rank, args.loras, device)
            runs = variants(fast, torch_path, x, w, b, mask)
            t = {n: triton.testing.do_bench(runs[n], return_mode="median")
                 for n in ("base", "triton rmw", "reorder triton down", "reorder cublas down")}
            print(f"sweep {name:15s} up {bm_up}x{bn_up} w{warps_up} down {bm_down} w{warps_down}: " + ", ".join(
                f"{n} +{100 * (v / t['base'] - 1):.1f}%" for n, v in t.items() if n != "base"))


if __name__ == "__main__":
    main()
