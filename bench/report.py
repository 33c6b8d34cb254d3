"""Writes docs/benchmarks.md and docs/bench/ratios.png from the results that flux_bench.py wrote.

    python3 bench/report.py        # reads the JSON files and logs under docs/bench/
"""
import json
import re
from pathlib import Path

from PIL import Image, ImageDraw

DOCS = Path(__file__).resolve().parents[1] / "docs"
RESULTS = DOCS / "bench"
RESIDENT = "c'"  # row c' of the main run: c with every LoRA term resident on the GPU
COMMAND = ("python3 bench/flux_bench.py --comfyui <ComfyUI> --out <dir> --rows abcd "
           "[--part main|subjects|sizes] [--fp8] [--disable-dynamic-vram]; then python3 bench/report.py")


def subjects_from_log() -> dict[str, float]:
    found = {}
    for line in (RESULTS / "subjects_log.txt").read_text().splitlines():
        match = re.match(r"\[\s*[\d.]+ s\] (.+?): ([\d.]+) s$", line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def bars(rows: dict[str, float], path: Path, title: str) -> None:
    width, bar, gap, left = 760, 34, 14, 260
    image = Image.new("RGB", (width, 40 + len(rows) * (bar + gap)), "white")
    draw = ImageDraw.Draw(image)
    top = max(rows.values())
    draw.text((10, 10), title, fill="black")
    for i, (name, value) in enumerate(rows.items()):
        y = 34 + i * (bar + gap)
        draw.text((10, y + 10), name, fill="black")
        length = int((width - left - 80) * min(value, top) / top)
        draw.rectangle([left, y, left + length, y + bar], fill=(60, 120, 200) if value < 2 else (200, 80, 60))
        draw.text((left + length + 6, y + 10), f"{value:.2f}", fill="black")
    image.save(path)


def layer_table() -> list[str]:
    lines = (RESULTS / "layers.txt").read_text().splitlines()
    return [line for line in lines if not line.startswith("sweep")]


def triton_run(row: str) -> str:
    rows = json.loads((RESULTS / "main_triton.json").read_text())["rows"]
    name = next(k for k in rows if k.startswith(row + " "))
    return f"{rows[name]['over_b']:.2f}"


def profile_line(name: str) -> str:
    """'Self CUDA time total' of the profile section `name`."""
    text = (RESULTS / "profile.txt").read_text().split(f"== {name}:")[1]
    return next(line.split(":")[1].strip() for line in text.splitlines() if line.startswith("Self CUDA time total"))


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def row_of(run: dict, row: str) -> dict:
    """The row of `run` named by its letter: "c" is "c FreeFuse continue", "c'" the resident one."""
    return run["rows"][next(k for k in run["rows"] if k.startswith(row + " "))]


def over_b(run: dict, row: str) -> float:
    return row_of(run, row)["over_b"]


def seconds(run: dict, row: str) -> float:
    return row_of(run, row)["seconds"]


def peak_over_b(run: dict, row: str) -> float:
    return row_of(run, row)["peak_gib"] - row_of(run, "b")["peak_gib"]


def ms(breakdown: dict) -> str:
    return ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in breakdown.items())


def main() -> None:
    main = load("main.json")
    h100 = load("main_h100.json")
    per_layer = load("main_prefetch_per_layer.json")
    fp8, nodyn = load("main_fp8.json"), load("main_nodyn.json")
    four = load("subjects4.json")["4"]
    sizes = load("sizes.json")
    subjects = subjects_from_log()
    rows = main["rows"]
    b = rows["b stock LoRA (merged)"]
    c, d = over_b(main, "c"), over_b(main, "d")
    extra = main["extraction_over_first_k_steps_seconds"]
    four_c, four_d = four["c"][0] / four["b"][0], four["d"][0] / four["b"][0]
    toy_256 = json.loads((DOCS / "fidelity" / "results_cpu.json").read_text())["two"]["FreeFuse default"]
    toy_128 = json.loads((DOCS / "fidelity" / "results_cpu_superpixels128.json").read_text())["two"]
    toy_128 = toy_128["superpixels 128 px"]
    bars({k: v["over_b"] for k, v in rows.items()}, RESULTS / "ratios.png",
         f"time / merged LoRA run (b), FLUX.1-dev-sized model, {main['device']}, {main['size']} px, "
         f"{main['steps']} steps")
    lines = [
        "# Benchmark: FreeFuse against an ordinary LoRA run",
        "",
        f"**freefuse / merged = {d:.2f}** (restart, the default; 2 subjects, {main['size']} px); "
        f"continue: **{c:.2f}**. Device: {main['device']}.",
        "",
        f"Device: {main['device']} (the lent machine's one GPU), ComfyUI 0.33.0 sampling path, ComfyUI's "
        f"default memory management (dynamic VRAM {'on' if main['dynamic_vram'] else 'off'}). A FLUX.1-dev-sized "
        f"Flux (19 double + 38 single blocks, hidden 3072) with random bf16 weights, two random rank-{main['rank']} "
        "LoRAs in ai-toolkit/diffusers format on every linear layer of every block, random conditioning of the real "
        f"shapes (512 T5 tokens), {main['size']} x {main['size']} px, {main['steps']} steps, euler/simple, cfg 1, "
        "batch 1. Times are medians of 2 runs after a warm-up, all rows in one process; ratios are to row b of the "
        "same run. Mask extraction defaults: step 6, block 16, VAE decode of x0, superpixels at 256 px.",
        "",
        f"Command: `{COMMAND}` (results and logs in `docs/bench/`; this table: `main.json`, `main_log.txt`).",
        "",
        "| row | seconds | / b | peak GiB |",
        "|---|---|---|---|",
    ]
    lines += [f"| {k} | {v['seconds']:.3f} | {v['over_b']:.3f} | {v['peak_gib']:.2f} |" for k, v in rows.items()]
    first = main["first_run_after_lora_change"]
    lora = main["lora_gib"]
    lines += [
        "",
        "![ratios](bench/ratios.png)",
        "",
        "Row c' is row c with every LoRA term resident on the GPU instead of prefetched (below). Row e, ComfyUI "
        f"core hooks with masked conditioning, ran on an H100 in an earlier session (`main_h100.json`): "
        f"{over_b(h100, 'e'):.1f} x b there, next to c {over_b(h100, 'c'):.2f} and d {over_b(h100, 'd'):.2f} of the "
        "same run.",
        "",
        "## Memory: LoRA terms prefetched from pinned host memory",
        "",
        f"Two rank-32 LoRAs on every layer are {main['lora_gib_on_gpu_resident']:.2f} GiB of tensors. Held on the "
        f"GPU (row c') they raise the peak by {peak_over_b(main, RESIDENT):.2f} GiB over b. The pack now "
        "keeps them in pinned host memory on CUDA, one buffer per transformer block, and copies each block's terms "
        "into a ring of 3 GPU buffers two blocks ahead of use, on a side stream (`freefuse_core/prefetch.py`). "
        f"This run: {lora['gpu']:.3f} GiB of ring on the GPU, {lora['pinned_host']:.2f} GiB pinned on the host; "
        f"peak c - b = {peak_over_b(main, 'c'):.2f} GiB; latents of c with prefetched and resident terms: max |diff| "
        f"{main['prefetched_vs_resident_max_abs_diff']}. The price in time: c / c' = "
        f"{seconds(main, 'c') / seconds(main, RESIDENT):.3f}. "
        "A first version that staged every layer on its own (a buffer, an event and new views per layer call) cost "
        f"c / c' = {seconds(per_layer, 'c') / seconds(per_layer, RESIDENT):.3f} "
        "in the same kind of run (`main_prefetch_per_layer.json`): Python work per layer, not copy bandwidth.",
        "",
        f"First run after a LoRA or strength change (load + sampling): merged {first['b merged']:.1f} s, "
        f"FreeFuse continue {first['c FreeFuse continue']:.1f} s.",
        "",
        "## Mask extraction",
        "",
        f"Over the first k steps alone: {extra:.3f} s = {extra / b['seconds']:.3f} of b. Inside it: "
        f"{ms(main['extraction_breakdown_seconds'])}; the rest is the partial evaluation of step k (blocks 0..16) and "
        "a second sampler set-up. The same measure in the per-layer-prefetch run on the same kind of machine: "
        f"{per_layer['extraction_over_first_k_steps_seconds'] / seconds(per_layer, 'b'):.3f} "
        f"of b ({ms(per_layer['extraction_breakdown_seconds'])}): it is one timed call, and varies between runs.",
        "",
        f"With `superpixel_px` 128: {ms(main['extraction_breakdown_seconds_128px'])}. These GPU-machine figures "
        "predate a fix: SLIC on the reduced copy took the copy's own count (256 superpixels at 256 px) instead of "
        "Eq. 11's sqrt(H W) of the generated image (1024 at 1024 px), which it now takes. The fixed count was not "
        "timed on the GPU machine; `python3 bench/slic_bench.py` on this repository's CPU machine "
        "(`docs/bench/slic_cpu.txt`): " + "; ".join((RESULTS / "slic_cpu.txt").read_text().splitlines()) + ". "
        "On the toy world ([`fidelity.md`](fidelity.md), 72 two-character samples a row) 128 px gives identity "
        f"leak {toy_128['identity leak']:.3f} and mask IoU {toy_128['mask IoU']:.3f} against "
        f"{toy_256['identity leak']:.3f} and {toy_256['mask IoU']:.3f} at 256 px; the toy cannot speak for "
        "FLUX.1-dev's images, so the default stays 256 px.",
        "",
        "## Other settings (same device, one warm-up and one timed run each)",
        "",
        "| run | b merged s | c continue s | c / b | c' resident s | peak c - b GiB | first run b s | first run c s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in (("fp8 weights (`--fp8`)", fp8), ("`--disable-dynamic-vram`", nodyn)):
        lines.append(f"| {name} | {seconds(run, 'b'):.2f} | "
                     f"{seconds(run, 'c'):.2f} | {over_b(run, 'c'):.3f} | "
                     f"{seconds(run, RESIDENT):.2f} | "
                     f"{peak_over_b(run, 'c'):.2f} | {run['first_run_after_lora_change']['b merged']:.1f} | "
                     f"{run['first_run_after_lora_change']['c FreeFuse continue']:.1f} |")
    lines += [
        "",
        f"4 subjects at {main['size']} px (`subjects4.json`, one timed run each): b {four['b'][0]:.2f} s, "
        f"c {four['c'][0]:.2f} s (c / b = {four_c:.3f}), d {four['d'][0]:.2f} s (d / b = {four_d:.3f}); "
        f"peak c - b {four['c'][1] - four['b'][1]:.2f} GiB.",
        "",
        "## Scaling on the H100 (earlier session: before prefetching, one warm-up + one timed run each)",
        "",
        "| case | b merged s | c continue s | c / b | d restart s | d / b |",
        "|---|---|---|---|---|---|",
    ]
    for size, r in sizes["sizes"].items():
        lines.append(f"| {size} px | {r['b'][0]:.2f} | {r['c'][0]:.2f} | {r['c'][0] / r['b'][0]:.3f} | | |")
    for rank, r in sizes["ranks"].items():
        lines.append(f"| rank {rank} | {r['b'][0]:.2f} | {r['c'][0]:.2f} | {r['c'][0] / r['b'][0]:.3f} | "
                     f"{r['d'][0]:.2f} | {r['d'][0] / r['b'][0]:.3f} |")
    if "b 3" in subjects:
        lines.append(f"| 3 subjects | {subjects['b 3']:.2f} | {subjects['c 3']:.2f} | "
                     f"{subjects['c 3'] / subjects['b 3']:.3f} | {subjects['d 3']:.2f} | "
                     f"{subjects['d 3'] / subjects['b 3']:.3f} |")
    lines += [
        "",
        f"Core hooks (e) at 512 px, 2 subjects: {subjects.get('e 2 at 512 px', float('nan')):.1f} s against "
        f"{subjects.get('d 2 at 512 px', float('nan')):.2f} s for FreeFuse restart. The 3- and 4-subject hook runs "
        "did not finish inside the 10-minute call limit.",
        "",
        "## Targets of issue 5 and where they stand",
        "",
        f"- Continue, 2 subjects, {main['size']} px: c / b = {c:.2f} (target <= 1.08): **not met**. "
        f"4 subjects: {four_c:.2f} (target <= 1.10): **not met**.",
        f"- Restart (default): d / b = {d:.2f} (target <= 1.27; issue 5 gives 2.05 for the existing pack, "
        "not measured here): **not met**.",
        f"- Extraction {extra / b['seconds']:.3f} of b (target <= 0.02): **not met**.",
        f"- Peak memory c - b = {peak_over_b(main, 'c'):.2f} GiB at {main['size']} px (target <= 0.5): **met**, "
        "by prefetching the LoRA terms.",
        "- 2048 px ran on the H100 (c / b above); stage 1 never allocates an `N x N` tensor (asserted in tests/core "
        "at 64 x 64).",
        "",
        "Where the time goes: the masked LoRA term is added by separate GEMMs beside ComfyUI's own layer "
        "(`x A^T`, mask, `y[:, slice] += h B^T` through `addmm_`), which reads and writes each layer's output once "
        "more.",
        "",
        "## Fusion attempts (per layer, H100, `python3 bench/layer_bench.py --sweep`)",
        "",
        "Each linear layer kind of a FLUX.1-dev step at 1024 px with two rank-32 LoRAs and binary masks, "
        "median GPU time over the base `F.linear`, in one process on an H100 "
        "(full output in `docs/bench/layers.txt`). Variants: the pack's torch path; two Triton launches "
        "(`bench/triton_lowrank.py`: masked down projection, then every slice's up projection added into `y`); "
        "the same term written first and cuBLAS adding `x W^T` into it with beta = 1 (no extra read of `y`).",
        "",
        "```",
        *layer_table(),
        "```",
        "",
        f"With the Triton launches inside the pack, the whole run measured c / b = {triton_run('c')} and "
        f"d / b = {triton_run('d')} (`docs/bench/main_triton.json`), worse than the torch path, so the pack "
        "keeps the torch path. None of the unfused variants gets under about +20 % of the linear layers' time.",
        "",
        "Each piece alone (`python3 bench/layer_bench.py --parts`, `docs/bench/layer_parts.txt`), microseconds:",
        "",
        "```",
        *(RESULTS / "layer_parts.txt").read_text().splitlines(),
        "```",
        "",
        "One read plus one write of the output (`y.add_(y)`) alone costs 16 % of the base GEMM at `qkv` and 15 % "
        "at `linear1`: the floor of any term added outside the base GEMM, before the down projection's read of `x`.",
        "",
        "`python3 bench/triton_gemm.py` (`docs/bench/triton_gemm.txt`) times a plain Triton GEMM (pointer loads, "
        "grouped tiles, the best of 7 block shapes) and the same kernel with the LoRA up projection as one more "
        "`tl.dot` per tile, as multiples of cuBLAS:",
        "",
        "```",
        *(RESULTS / "triton_gemm.txt").read_text().splitlines(),
        "```",
        "",
        "Profile of 8 steps at 1024 px (`python3 bench/flux_bench.py --part profile`, `docs/bench/profile.txt`): "
        f"GPU kernel time {profile_line('b merged')} for the merged model and {profile_line('c masked')} for the "
        "masked model; the cuBLAS kernels that add into an existing output (`..._badd_...`) account for most of "
        "the difference.",
        "",
        f"## Weight layouts with the term inside the base GEMM ({main['device']}, `python3 bench/kext_bench.py`)",
        "",
        "K-extension (`Wp = [W | B']`, the base weight a strided view, `y = [x | f (x A^T)] Wp^T` in one cuBLAS "
        "call after one Triton pass over `x`) and row-stacking (`Wr = [W ; A]`, one GEMM gives `[y | h]`, then "
        "`y += (f h) B'^T`), per layer kind, % over the base `F.linear` (`docs/bench/kext.txt`, log "
        "`kext_log.txt`):",
        "",
        "```",
        *(RESULTS / "kext.txt").read_text().splitlines(),
        "```",
        "",
        "The byte and FLOP count had predicted +7.4 to +8.5 % of the linear layers' time per step. Measured (the "
        "`per step` line): " + kext_total() + ". That best figure still counts the K-extension's Triton pass at "
        "the fused `qkv` and `linear1`, where it failed its error bound of 2e-2 (" + kext_failures() + "). Even so, "
        f"it is {kext_step_share(b['seconds'] / main['steps']):.1%} of a step of b, so neither layout reaches "
        "c / b <= 1.08, and neither is worth re-laying out the weights inside ComfyUI's patcher.",
    ]
    (DOCS / "benchmarks.md").write_text("\n".join(lines) + "\n")


def kext_total() -> str:
    line = next(x for x in (RESULTS / "kext.txt").read_text().splitlines() if x.startswith("per step"))
    return line.split(":", 1)[1].strip()


def kext_step_share(step_seconds: float) -> float:
    """The best new layout's added linear-layer time as a share of one step of row b."""
    line = kext_total()
    base_ms = float(re.search(r"base ([\d.]+) ms", line).group(1))
    best = float(re.search(r"best new \+([\d.]+) %", line).group(1))
    return base_ms * best / 100 / 1000 / step_seconds


def kext_failures() -> str:
    line = next(x for x in (RESULTS / "kext_log.txt").read_text().splitlines() if x.startswith("FAIL:"))
    return line[len("FAIL:"):].strip()


if __name__ == "__main__":
    main()
