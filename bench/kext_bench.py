"""Two weight layouts that put the masked LoRA term inside the base GEMM, at FLUX.1-dev's shapes.

    python3 bench/kext_bench.py [--out table.txt]     # CUDA: correctness, tuning, timing, table last
    python3 bench/kext_bench.py --check-cpu          # CPU, Triton interpreter, small shapes: correctness only

Each layer computes `y = x W^T + b + sum_l F_l(token) s_l B_l A_l x` (Eq. 1). With every LoRA's `A`
stacked into `A [R, K]` (R = total rank, padded to a multiple of 8 with zero rows), the mask gathered
per rank row `f[m, r] = F[m, owner(r)]`, and `B' [out, R]` the stacked `s B` placed at each slice's
output rows (zero where a LoRA term does not feed a slice: the fused `qkv` and `linear1`):

K-extension (meant for out >= in: qkv, proj, mlp.0, linear1). Store `Wp = [W | B'] [out, K + R]`;
the base weight is the strided view `W = Wp[:, :K]` (leading dimension K + R, no second copy).

    xp = [x | f * (x A^T)]   [M, K + R]         y = xp Wp^T + b

`xp` comes from one Triton pass that reads `x` once, copies it into `xp[:, :K]` and accumulates
`x A^T` in fp32 (split over K with fp32 atomics when that fills the GPU better), then multiplies by
`f`; variants: the same through `torch.cat`, and `x` already written into `xp[:, :K]` by the
layer's producer (the kernel then only adds the R columns: the floor of this layout).

Row-stacking (meant for in > out: mlp.2, linear2). Store `Wr = [W ; A] [out + R, K]`, so that
`W = Wr[:out]` is a contiguous view; one GEMM gives both the output and the rank intermediate:

    [y | h] = x Wr^T + [b | 0]                   y += (f * h) B'^T     (addmm_ on the view y)

Every variant runs on every layer kind (the step total takes, per layer, the fastest new variant
that needs nothing from the layer's producer). Correctness is checked against a float64 reference
on fresh random inputs, with `s B` scaled so that the LoRA term is as large as `x W^T` (a wrong or
missing term shows). Times are medians from `triton.testing.do_bench`, in % over `F.linear` with a
contiguous `W`; the step total weights each kind by its count per step as `layer_bench.py` does.
"""
import argparse
import math
import os
import sys
from pathlib import Path

if "--check-cpu" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # read when triton (imported by layer_bench) decorates its functions

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
import triton.testing

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from layer_bench import KINDS, H  # noqa: E402

from freefuse_core.lowrank import LowRankTerm, MaskedLowRank  # noqa: E402

CONFIGS = [  # BM, BK, SPLIT (programs along K), warps
    (64, 64, 1, 4), (64, 64, 2, 4), (64, 64, 4, 4), (32, 64, 4, 4), (128, 64, 2, 8), (128, 64, 4, 8),
]
CHECK_CONFIGS = [(16, 32, 1, 4), (16, 32, 3, 4), (32, 16, 2, 4)]  # small blocks: edges and splits at small shapes
CHECK_RANK = 5  # --check-cpu: R = 10 .. 40, so padding to 8 and a power-of-two rank block are both exercised
TOLERANCE = 2e-2
NEW = ("kext triton", "kext cat", "rowstack")  # new variants that need nothing from the layer's producer
COPY_OPS = ("aten::copy_", "aten::clone", "aten::contiguous")
INTERPRET = bool(triton.knobs.runtime.interpret)


@triton.jit
def finish(acc, f, owner, xp, rows, ranks, M, K, R, sfm, sxpm):
    """xp[rows, K + r] = f[rows, owner[r]] * acc (the fp32 sum of x A^T), cast to xp's dtype."""
    keep = (rows[:, None] < M) & (ranks[None, :] < R)
    col = tl.load(owner + ranks, mask=ranks < R, other=0)
    fac = tl.load(f + rows[:, None] * sfm + col[None, :], mask=keep, other=0.0).to(tl.float32)
    tl.store(xp + rows[:, None] * sxpm + K + ranks[None, :], (acc * fac).to(xp.dtype.element_ty), mask=keep)


@triton.jit
def extend(x, a, f, owner, xp, ws, count, M, K, R, sxm, sam, sfm, sxpm, COPY_X: tl.constexpr,
           SPLIT: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, RP: tl.constexpr, UPCAST: tl.constexpr):
    """Program (i, j): rows i*BM.., the j-th of SPLIT chunks of K; copies its x tile when COPY_X.

    UPCAST (interpreter only): Triton 3.8's interpreter multiplies bf16 bit patterns in `tl.dot`, so there
    the operands go to fp32 first (exact for bf16 values); compiled, the dot is bf16 x bf16 -> fp32.
    """
    pid_m = tl.program_id(0)
    rows = pid_m * BM + tl.arange(0, BM)
    ranks = tl.arange(0, RP)
    chunk = tl.cdiv(tl.cdiv(K, SPLIT), BK) * BK
    k_lo = tl.program_id(1) * chunk
    k_hi = tl.minimum(k_lo + chunk, K)
    acc = tl.zeros((BM, RP), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BK):
        ks = k0 + tl.arange(0, BK)
        inside = (rows[:, None] < M) & (ks[None, :] < k_hi)
        xt = tl.load(x + rows[:, None] * sxm + ks[None, :], mask=inside, other=0.0)
        if COPY_X:
            tl.store(xp + rows[:, None] * sxpm + ks[None, :], xt, mask=inside)
        at = tl.load(a + ranks[:, None] * sam + ks[None, :], mask=(ranks[:, None] < R) & (ks[None, :] < k_hi),
                     other=0.0)
        if UPCAST:
            acc = tl.dot(xt.to(tl.float32), tl.trans(at).to(tl.float32), acc)
        else:
            acc = tl.dot(xt, tl.trans(at), acc)
    if SPLIT == 1:
        finish(acc, f, owner, xp, rows, ranks, M, K, R, sfm, sxpm)
    else:  # partial sums into a self-cleaning fp32 workspace; the last program of the row block finishes
        keep = (rows[:, None] < M) & (ranks[None, :] < R)
        tile = ws + rows[:, None] * RP + ranks[None, :]
        tl.atomic_add(tile, acc, mask=keep, sem="relaxed")
        tl.debug_barrier()
        if tl.atomic_add(count + pid_m, 1, sem="acq_rel") == SPLIT - 1:
            total = tl.atomic_add(tile, tl.zeros_like(acc), mask=keep, sem="relaxed")  # a read at L2
            tl.store(tile, tl.zeros_like(acc), mask=keep)
            tl.store(count + pid_m, 0)
            finish(total, f, owner, xp, rows, ranks, M, K, R, sfm, sxpm)


class Extension:
    """`xp[:, K:] = f * (x A^T)` and, unless x already lives in `xp[:, :K]`, `xp[:, :K] = x`: one launch."""

    def __init__(self, down: torch.Tensor, owner: torch.Tensor, config=CONFIGS[0]):
        self.down, self.owner, self.config = down, owner, config
        self.rp = max(16, 1 << (down.shape[0] - 1).bit_length())  # tl.arange and tl.dot: a power of two >= 16
        self._work = {}

    def workspace(self, m: int):
        """fp32 partial sums and per-row-block arrival counters; the kernel leaves both zero."""
        bm = self.config[0]
        key = (m, bm)
        if key not in self._work:
            self._work[key] = (torch.zeros(m, self.rp, device=self.down.device, dtype=torch.float32),
                               torch.zeros(triton.cdiv(m, bm), device=self.down.device, dtype=torch.int32))
        return self._work[key]

    def __call__(self, x2: torch.Tensor, f: torch.Tensor, xp: torch.Tensor, copy_x: bool = True) -> torch.Tensor:
        (m, k), r = x2.shape, self.down.shape[0]
        bm, bk, split, warps = self.config
        ws, count = self.workspace(m)
        extend[(triton.cdiv(m, bm), split)](
            x2, self.down, f, self.owner, xp, ws, count, m, k, r, x2.stride(0), self.down.stride(0), f.stride(0),
            xp.stride(0), COPY_X=copy_x, SPLIT=split, BM=bm, BK=bk, RP=self.rp, UPCAST=INTERPRET, num_warps=warps)
        return xp


class Layouts:
    """One layer's weights in both layouts, built from the pack's stacked terms (`MaskedLowRank`)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, path: MaskedLowRank):
        out, k = w.shape
        r = path.down.shape[0]
        rp = r + (-r) % 8                       # rows of Wp and Wr stay 16-byte aligned (K, out multiples of 8)
        self.out, self.slices = out, path.slices
        self.down = torch.zeros(rp, k, device=w.device, dtype=w.dtype)
        self.down[:r] = path.down
        self.owner = torch.zeros(rp, device=w.device, dtype=torch.long)
        self.owner[:r] = path.owner
        up = torch.zeros(out, rp, device=w.device, dtype=w.dtype)
        for s in path.slices:
            up[s.start:s.stop, s.ranks] = s.up
        self.wp = torch.cat([w, up], dim=1)                  # K-extension  [W | B']
        self.wr = torch.cat([w, self.down], dim=0)           # row-stacking [W ; A]
        self.br = torch.cat([b, torch.zeros(rp, device=b.device, dtype=b.dtype)])
        self.ext = Extension(self.down, self.owner)

    @property
    def rank(self) -> int:
        return self.down.shape[0]


def build(tokens, d_in, d_out, parts, hidden, rank, loras, device):
    """A layer of the benchmark's shape: (torch path, contiguous W, bias, both layouts)."""
    bounds = [0, hidden, 2 * hidden, 3 * hidden][:parts] + [d_out]
    terms = [LowRankTerm(l, torch.randn(rank, d_in) / d_in ** 0.5, torch.randn(stop - start, rank) / rank ** 0.5, start)
             for l in range(loras) for start, stop in zip(bounds[:-1], bounds[1:])]
    path = MaskedLowRank(terms, d_out).to(device, torch.bfloat16)
    w = torch.randn(d_out, d_in, device=device, dtype=torch.bfloat16) / d_in ** 0.5
    b = torch.randn(d_out, device=device, dtype=torch.bfloat16) * 0.1
    return path, w, b, Layouts(w, b, path)


def inputs(tokens, d_in, loras, device, seed):
    """x [M, K] and a binary mask [M, loras] (each token owned by one LoRA or none)."""
    gen = torch.Generator(device).manual_seed(seed)
    x2 = torch.randn(tokens, d_in, device=device, dtype=torch.bfloat16, generator=gen)
    owner = torch.randint(0, loras + 1, (tokens,), device=device, generator=gen)
    f = F.one_hot(owner, loras + 1)[:, :loras].to(torch.bfloat16).contiguous()
    return x2, f


def variants(path, w, b, lay: Layouts, x2, f):
    """name -> callable giving the layer output `[M, out]` (a strided view for row-stacking)."""
    m, k = x2.shape
    x3, f3 = x2.view(1, m, k), f.view(1, m, -1)
    w_view = lay.wp[:, :k]
    resident = torch.empty(m, k + lay.rank, device=x2.device, dtype=x2.dtype)
    resident[:, :k] = x2                                   # as if the layer's producer had written x there

    def kext_triton():
        xp = torch.empty(m, k + lay.rank, device=x2.device, dtype=x2.dtype)
        return F.linear(lay.ext(x2, f, xp), lay.wp, b)

    def kext_cat():
        h = torch.mm(x2, lay.down.t())
        h.mul_(f.index_select(-1, lay.owner))
        return F.linear(torch.cat([x2, h], dim=1), lay.wp, b)

    def kext_resident():
        return F.linear(lay.ext(resident[:, :k], f, resident, copy_x=False), lay.wp, b)

    def rowstack():
        yh = F.linear(x2, lay.wr, lay.br)
        h = yh[:, lay.out:]
        h.mul_(f.index_select(-1, lay.owner))
        for s in lay.slices:
            yh[:, s.start:s.stop].addmm_(h[:, s.ranks], s.up.t())
        return yh[:, :lay.out]

    return {
        "base": lambda: F.linear(x2, w, b),
        "base strided W": lambda: F.linear(x2, w_view, b),
        "torch": lambda: path.add_to(F.linear(x3, w, b), x3, f3).view(m, -1),
        "kext triton": kext_triton,
        "kext cat": kext_cat,
        "kext in-place x": kext_resident,
        "rowstack": rowstack,
    }


def references(path, w, b, x2, f):
    """`x W^T + b` and Eq. 1 in float64, from the bf16 weights."""
    x = x2.double()
    base = x @ w.double().t() + b.double()
    y = base.clone()
    h = (x @ path.down.double().t()) * f.double()[:, path.owner]
    for s in path.slices:
        y[:, s.start:s.stop] += h[:, s.ranks] @ s.up.double().t()
    return base, y


def errors(runs, refs):
    """name -> ||out - ref|| / ||ref||, ref without the LoRA term for the base variants (NaN fails)."""
    def rel(out, ref):
        return float((out.double() - ref).norm() / ref.norm())
    return {n: rel(fn(), refs[0] if n.startswith("base") else refs[1]) for n, fn in runs.items()}


def worst(values):
    """The largest value, or NaN if any is NaN."""
    values = list(values)
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def failures(errs):
    """Variants whose error is above the tolerance or NaN."""
    return [n for n, e in errs.items() if not e <= TOLERANCE]


def copy_check(x2, w, lay: Layouts):
    """Copy ops and kernel counts of `F.linear` with `Wp[:, :K]` and of `addmm_` into a strided output."""
    k = x2.shape[1]
    yh = F.linear(x2, lay.wr, lay.br)
    h = yh[:, lay.out:]
    calls = {"contiguous W": lambda: F.linear(x2, w), "strided W": lambda: F.linear(x2, lay.wp[:, :k]),
             "addmm_ into y view": lambda: yh[:, :lay.out].addmm_(h, lay.wp[:, k:].t())}
    found = {n: traced(fn) for n, fn in calls.items()}
    ok = all(not ops for ops, _ in found.values()) and len(found["strided W"][1]) == len(found["contiguous W"][1])
    lines = [f"  {n:20s} copy ops {ops or 'none'}; kernels {kernels or '(CPU)'}" for n, (ops, kernels) in found.items()]
    return ok, lines


def traced(fn):
    """(copy ops, device kernel names) that one call of `fn` runs."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    fn()
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    events = prof.events()
    ops = sorted({e.name for e in events if e.name in COPY_OPS})
    kernels = [e.name[:60] for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    return ops, kernels


def check_cpu(args):
    """Every variant and kernel configuration at small shapes on the CPU, through Triton's interpreter."""
    torch.manual_seed(0)
    device, lines, bad = torch.device("cpu"), [], []
    for name, (tokens, d_in, d_out, parts, _) in KINDS.items():
        shape = (tokens // 256 + 5, d_in // 64, d_out // 64, parts, H // 64)
        path, w, b, lay = build(*shape, CHECK_RANK, args.loras, device)
        x2, f = inputs(shape[0], shape[1], args.loras, device, seed=1)
        refs = references(path, w, b, x2, f)
        per_config = []
        for config in CHECK_CONFIGS:
            lay.ext.config = config
            per_config.append(errors(variants(path, w, b, lay, x2, f), refs))
            ws, count = lay.ext.workspace(shape[0])
            if ws.abs().max() != 0 or count.abs().max() != 0:
                bad.append(f"{name}: workspace left dirty by {config}")
        errs = {n: worst(e[n] for e in per_config) for n in per_config[0]}
        bad += [f"{name}: {n} error {errs[n]:.1e}" for n in failures(errs)]
        lines.append(f"{name:16s} M {shape[0]:3d} K {shape[1]:3d} out {shape[2]:3d} R {lay.rank:3d}  "
                     + "  ".join(f"{n} {e:.0e}" for n, e in errs.items()))
    ok, copies = copy_check(x2, w, lay)
    bad += [] if ok else ["a copy inside F.linear with the strided W or addmm_ into the strided view"]
    text = "\n".join([f"--check-cpu (Triton interpreter, rank {CHECK_RANK}, configs {CHECK_CONFIGS}): "
                      f"max ||out - ref|| / ||ref|| over configs", *lines, "copy check, last kind:", *copies,
                      "PASS" if not bad else "FAIL: " + "; ".join(bad)])
    return text, not bad


def tune(lay: Layouts, x2, f, bench):
    """The fastest kernel configuration for this shape (sets it on the layer); returns (config, us).

    A configuration that does not fit the device's shared memory or registers is skipped.
    """
    xp = torch.empty(x2.shape[0], x2.shape[1] + lay.rank, device=x2.device, dtype=x2.dtype)
    times = {}
    for config in CONFIGS:
        lay.ext.config = config
        try:
            times[config] = bench(lambda: lay.ext(x2, f, xp), fast=True)
        except triton.runtime.errors.OutOfResources:
            continue
    lay.ext.config = min(times, key=times.get)
    return lay.ext.config, 1000 * times[lay.ext.config]


def floors(m, k, out, r, base_ms, bandwidth):
    """Predicted % over base: extra GEMM FLOPs at the base GEMM's rate plus extra bytes at copy bandwidth."""
    rate = 2 * m * k * out / base_ms                      # FLOP per ms of the base GEMM
    kext = base_ms * r / k + max(2 * m * (2 * k + r) / bandwidth, 2 * m * k * r / rate)
    resident = base_ms * r / k + max(2 * m * (k + r) / bandwidth, 2 * m * k * r / rate)
    rows = base_ms * r / out + max(2 * m * (2 * out + 3 * r) / bandwidth, 2 * m * out * r / rate)
    return {n: 100 * t / base_ms for n, t in (("kext", kext), ("kext in-place x", resident), ("rowstack", rows))}


def copy_bandwidth(bench, device):
    """Bytes per ms of a 256 MiB device copy (read + write)."""
    src = torch.empty(128 << 20, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    return 2 * src.numel() * src.element_size() / bench(lambda: dst.copy_(src))


def run_gpu(args):
    """Per kind: tune the xp kernel, check every variant, time it; returns (table, all passed)."""
    def bench(fn, fast=False):
        return triton.testing.do_bench(fn, warmup=10 if fast else 25, rep=30 if fast else 100, return_mode="median")

    device = torch.device("cuda")
    torch.manual_seed(0)
    bandwidth = copy_bandwidth(bench, device)
    rows, totals, notes, bad = [], {}, [], []
    for name, (tokens, d_in, d_out, parts, count) in KINDS.items():
        path, w, b, lay = build(tokens, d_in, d_out, parts, H, args.rank, args.loras, device)
        x2, f = inputs(tokens, d_in, args.loras, device, seed=1)
        config, us = tune(lay, x2, f, bench)
        errs = errors(variants(path, w, b, lay, x2, f), references(path, w, b, x2, f))
        bad += [f"{name}: {n} error {errs[n]:.1e}" for n in failures(errs)]
        x2, f = inputs(tokens, d_in, args.loras, device, seed=2)
        times = {n: bench(fn) for n, fn in variants(path, w, b, lay, x2, f).items()}
        best = min(NEW, key=times.get)
        times["best new"] = times[best]
        times["best incl. in-place x"] = min(times[best], times["kext in-place x"])
        for n, t in times.items():
            totals[n] = totals.get(n, 0.0) + count * t
        floor = floors(tokens, d_in, d_out, lay.rank, times["base"], bandwidth)
        rows.append((name, lay.rank, times, errs, best, floor["kext" if d_out >= d_in else "rowstack"]))
        notes.append(f"{name:16s} R {lay.rank:3d} xp kernel BM {config[0]} BK {config[1]} split {config[2]} "
                     f"warps {config[3]}: {us:.1f} us; floors % " + ", ".join(f"{n} {v:.1f}" for n, v in floor.items()))
        if name == "img qkv":
            ok, copies = copy_check(x2, w, lay)
            notes += ["copy check (img qkv):", *copies]
            bad += [] if ok else ["a copy inside F.linear with the strided W or addmm_ into the strided view"]
    print(f"copy bandwidth {bandwidth / 1e9:.2f} TB/s; " + torch.cuda.get_device_name())
    print("\n".join(notes))
    text = table(rows, totals) + ("\nall checks PASS" if not bad else "\nFAIL: " + "; ".join(bad))
    return text, not bad


def table(rows, totals):
    """Per kind: % over base and relative error of each variant, the best new one, its floor; step totals."""
    names = [n for n in rows[0][2] if n not in ("base", "best new", "best incl. in-place x")]
    head = f"{'layer':16s} {'R':>3s} {'base ms':>8s} " + " ".join(f"{n[:15]:>15s}" for n in names)
    lines = [head + f" {'best new':>22s} {'floor':>6s}   (% over base; rel. err)"]
    for name, r, times, errs, best, floor in rows:
        pct = {n: 100 * (t / times["base"] - 1) for n, t in times.items()}
        lines.append(f"{name:16s} {r:3d} {times['base']:8.3f} " + " ".join(
            f"{pct[n]:7.1f} {errs[n]:7.0e}" for n in names) + f" {best:>14s} {pct[best]:7.1f} {floor:6.1f}")
    lines.append("per step (linear layers only): base %.1f ms; " % totals["base"] + ", ".join(
        f"{n} +{100 * (t / totals['base'] - 1):.1f} %" for n, t in totals.items()
        if n in ("base strided W", "torch", "best new", "best incl. in-place x")))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=32, help="rank of each LoRA (GPU run)")
    parser.add_argument("--loras", type=int, default=2)
    parser.add_argument("--check-cpu", action="store_true", help="correctness only, CPU, Triton interpreter")
    parser.add_argument("--out", type=Path, help="also write the final table here")
    args = parser.parse_args()
    text, ok = check_cpu(args) if args.check_cpu else run_gpu(args)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
