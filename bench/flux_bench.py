"""GPU benchmark: FreeFuse against an ordinary LoRA run on a FLUX.1-dev-sized model.

Runs in one process on a GPU machine, through ComfyUI's own loaders and samplers:
a FLUX.1-dev-sized Flux (19 double + 38 single blocks, hidden 3072) with random bf16 weights,
random rank-`r` LoRAs in ai-toolkit/diffusers format on every linear layer of every block, random
conditioning of the real shapes (512 T5 tokens x 4096, pooled 768), euler/simple, cfg 1, batch 1.

Rows (after a warm-up of each): a no LoRA; b stock LoRA loader (merged); c FreeFuse continue;
d FreeFuse restart (default); e ComfyUI core hooks (Create Hook LoRA + masked conditioning,
the same LoRAs confined to the same masks). On CUDA with Triton, c and d add the LoRA terms of the
MLP-in and q, k columns inside the GELU or q/k norm after their layer (`freefuse_core.up_gelu`,
`up_rms_norm`), the pack's default there; c-unfused and d-unfused are c and d with every term added
in its layer (the path without Triton). Prints a table and the headline ratios last, and writes
JSON under --out.

    python3 bench/flux_bench.py --comfyui PATH --out DIR [--part main|scaling]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import importlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--comfyui", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--part", default="main", choices=["main", "subjects", "sizes", "profile", "calls", "pairs", "host",
                                                      "extraction", "staging"])
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each row, after one warm-up")
    p.add_argument("--extraction-repeats", type=int, default=1,
                   help="extraction and first-k-steps pairs timed in turn; the median difference is reported")
    p.add_argument("--disable-dynamic-vram", action="store_true")
    p.add_argument("--fp8", action="store_true", help="base weights stored as float8_e4m3fn (bf16 compute)")
    p.add_argument("--small", action="store_true", help="a tiny model, to check the script on a CPU")
    p.add_argument("--rows", default="abcdepu", help="which rows of the main and subjects parts to run (p: c' with "
                   "the terms resident, u: c-unfused and d-unfused, B: b again after the FreeFuse rows, f: the "
                   "existing FreeFuse pack, with --existing-pack)")
    p.add_argument("--subjects", default="2,3,4", help="subject counts of the subjects part")
    p.add_argument("--sizes", default="512,2048", help="image sizes (px) of the sizes part")
    p.add_argument("--ranks", default="16,64", help="LoRA ranks of the sizes part ('' for none)")
    p.add_argument("--existing-pack", help="row f: the folder freefuse_comfyui of yaoliliu/FreeFuse")
    return p.parse_args()


ARGS = parse_args()
sys.path.insert(0, ARGS.comfyui)
sys.argv = [sys.argv[0]] + (["--disable-dynamic-vram"] if ARGS.disable_dynamic_vram else [])
if ARGS.small:
    sys.argv.append("--cpu")
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing(True)
import comfy.cli_args  # noqa: E402,F401
import comfy.lora  # noqa: E402
import comfy.model_base  # noqa: E402
import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.supported_models  # noqa: E402
import existing_pack  # noqa: E402
import folder_paths  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import nodes  # noqa: E402

asyncio.run(nodes.load_custom_node(str(PACK)))
asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
pack = sys.modules[str(PACK).replace(".", "_x_")]
core = importlib.import_module(pack.__name__ + ".freefuse_core")


class _Glue:
    def __getattr__(self, name):
        return importlib.import_module(f"{pack.__name__}.freefuse_comfy.{name}")


glue = _Glue()
DEVICE = mm.get_torch_device()
FULL = dict(hidden=3072, depth=19, depth_single=38, context=4096, vec=768)
SMALL = dict(hidden=256, depth=3, depth_single=3, context=64, vec=32)
DIMS = SMALL if ARGS.small else FULL
WORDS = ("Alice", "Bob", "Carol", "Dave")
T0 = time.perf_counter()


def note(message: str) -> None:
    """Progress on stderr with the elapsed time, so a run cut off by its limit still says where it was."""
    sys.stderr.write(f"[{time.perf_counter() - T0:7.1f} s] {message}\n")
    sys.stderr.flush()


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn):
    sync()
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    sync()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE.type == "cuda" else 0.0
    return seconds, peak, result


def random_flux(dtype):
    config = glue.standin.flux_unet_config(**DIMS)
    skeleton = comfy.supported_models.Flux(config).get_model({}, device="meta")
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    sd = {}
    note("random weights")
    for name, tensor in skeleton.diffusion_model.state_dict().items():
        if "norm" in name:
            value = torch.ones(tensor.shape, device=DEVICE, dtype=torch.bfloat16)
        else:
            value = torch.randn(tensor.shape, device=DEVICE, dtype=torch.bfloat16, generator=generator) * 0.02
        sd[name] = value.cpu()
    del skeleton
    note("loading through comfy.sd.load_diffusion_model_state_dict")
    return comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": dtype})


def random_flux_vae():
    """FLUX.1's autoencoder (16 latent channels) with random weights, loaded as VAELoader would."""
    import comfy.ldm.models.autoencoder as autoencoder
    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    engine = autoencoder.AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
        decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": ddconfig})
    generator = torch.Generator().manual_seed(1)
    sd = {k: (torch.ones_like(v) if k.endswith("norm.weight") else torch.randn(v.shape, generator=generator) * 0.02)
          for k, v in engine.state_dict().items()}
    return comfy.sd.VAE(sd=sd)


def write_loras(model, folder: Path, rank: int, count: int) -> list[str]:
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    weights = model.model.state_dict()
    names = []
    for index in range(count):
        generator = torch.Generator().manual_seed(100 + index)
        sd = {}
        for key, target in key_map.items():
            if not key.startswith("transformer."):
                continue
            weight_key, offset = (target, None) if isinstance(target, str) else (target[0], target[1])
            weight = weights.get(weight_key)
            if weight is None or weight.ndim != 2:
                continue
            out = offset[2] if offset else None
            sd[key + ".lora_A.weight"] = (torch.randn(rank, weight.shape[1], generator=generator) * 0.01).bfloat16()
            up = torch.randn(out or weight.shape[0], rank, generator=generator) * 0.01
            sd[key + ".lora_B.weight"] = up.bfloat16()
            sd[key + ".alpha"] = torch.tensor(float(rank))
        name = f"bench_r{rank}_{index}.safetensors"
        save_file(sd, str(folder / name))
        names.append(name)
    return names


def conditioning(subjects: int):
    words = " and ".join(WORDS[:subjects])
    text = f"a photo of {words} standing together in a park"
    pieces, pos = [], 0
    for word in text.split(" "):
        start = text.index(word, pos)
        pieces.append(core.TokenPiece(word, start, start + len(word)))
        pos = start + len(word)
    tokens = 512
    pieces += [core.TokenPiece("", len(text), len(text))] * (tokens - len(pieces))
    generator = torch.Generator().manual_seed(7)
    context = torch.randn(1, tokens, DIMS["context"], generator=generator)
    pooled = torch.randn(1, DIMS["vec"], generator=generator)
    meta = glue.prompt.PromptTokens(text=text, pieces=tuple(pieces))
    return [[context, {"pooled_output": pooled, "guidance": 3.5, glue.prompt.PROMPT_KEY: meta}]]


class Bench:
    def __init__(self, dtype=torch.bfloat16):
        self.folder = Path(tempfile.mkdtemp())
        folder_paths.add_model_folder_path("loras", str(self.folder))
        self.base = random_flux(dtype)
        self.vae = comfy.sd.VAE(sd=glue.standin.tiny_vae_state_dict()) if ARGS.small else random_flux_vae()
        self.lora_names: dict[int, list[str]] = {}

    def loras(self, rank: int, count: int) -> list[str]:
        if len(self.lora_names.get(rank, [])) < count:
            self.lora_names[rank] = write_loras(self.base, self.folder, rank, count)
        return self.lora_names[rank][:count]

    def setup(self, model, subjects: int, size: int, steps: int):
        latent = nodes.EmptyLatentImage().generate(size, size, 1)[0]
        positive = conditioning(subjects)
        return glue.sampling.SamplingSetup(model=model, positive=positive, negative=positive, latent=latent,
                                           seed=0, steps=steps, cfg=1.0, sampler_name="euler",
                                           scheduler="simple", denoise=1.0)

    def stock(self, model, setup):
        return nodes.common_ksampler(model, setup.seed, setup.steps, setup.cfg, setup.sampler_name,
                                     setup.scheduler, setup.positive, setup.negative, setup.latent)[0]

    def merged(self, names):
        model = self.base
        for name in names:
            model = nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, 1.0)[0]
        return model

    def freefuse_model(self, names):
        model = self.base
        for i, name in enumerate(names):
            model = pack.FreeFuseLoraLoader.execute(model=model, lora_name=name, strength=1.0,
                                                    activation_words=WORDS[i]).result[0]
        return model

    def freefuse(self, setup, mode: str, image_source: str = "vae"):
        masks = glue.sampling.extract(setup, self.vae, 6 if setup.steps >= 8 else 2, 1 if ARGS.small else 16,
                                      True, 1.0, image_source)
        return glue.masked.sample_masked(masks, mode), masks

    def hooks(self, names, setup, masks):
        hooks_nodes = nodes.NODE_CLASS_MAPPINGS
        combined = None
        for i, name in enumerate(names):
            hook = hooks_nodes["CreateHookLoraModelOnly"]().create_hook_model_only(name, 1.0)[0]
            mask = masks.pixel_masks[0, i][None]
            cond = hooks_nodes["ConditioningSetProperties"]().set_properties(
                setup.positive, 1.0, "default", mask=mask, hooks=hook)[0]
            combined = cond if combined is None else nodes.ConditioningCombine().combine(combined, cond)[0]
        return nodes.common_ksampler(self.base, setup.seed, setup.steps, setup.cfg, setup.sampler_name,
                                     setup.scheduler, combined, combined, setup.latent)[0]


def injection_of(model):
    return model.injections[glue.injection.INJECTION_KEY][0].inject.__self__


def lora_gib(model) -> dict:
    """GiB of LoRA tensors the FreeFuse injection holds: resident casts and the prefetch rings on the
    GPU, the prefetch buffers in pinned host memory."""
    injection = injection_of(model)
    prefetcher = injection.prefetcher
    on_gpu = [f for lowrank in injection.cast.values() for f in lowrank.floats() if f.is_cuda]
    on_gpu += [buffer for ring in prefetcher.rings.values() for buffer in ring.buffers if buffer.is_cuda]
    pinned = [flat for flat in prefetcher.host.values() if flat.is_pinned()]
    return {"gpu": sum(t.numel() * t.element_size() for t in on_gpu) / 2**30,
            "pinned_host": sum(t.numel() * t.element_size() for t in pinned) / 2**30}


def measure(fn, repeats: int, name: str = "", warm_up=None):
    """(median seconds, peak GiB, each run's seconds, each run's seconds in the collector's gen-2 passes,
    each run's `EvalClock.summary()`), after one run of `warm_up` (default `fn`)."""
    note(f"{name}: warm-up")
    (warm_up or fn)()
    runs, collected, clocks = [], [], []
    for _ in range(repeats):
        with GcTimer() as collector, EvalClock() as clock:
            runs.append(timed(fn))
        collected.append(collector.seconds[2])
        clocks.append(clock.summary())
    note(f"{name}: " + ", ".join(f"{r[0]:.3f} s" for r in runs)
         + "; gen-2 collections (s): " + ", ".join(f"{c:.3f}" for c in collected)
         + "; evaluations: " + "; ".join(", ".join(f"{k} {v}" for k, v in c.items() if not isinstance(v, list))
                                         for c in clocks))
    return (statistics.median(r[0] for r in runs), max(r[1] for r in runs), [r[0] for r in runs], collected,
            clocks)


class EvalClock:
    """Each model evaluation of a run on the host's clock and on the GPU's: is the run bound by the GPU or
    by the host's Python, and where does the GPU's time outside the evaluations go? At the start and the
    end of each `BaseModel.apply_model` call the host's clock is read and a CUDA event recorded on the
    current stream (`t_gpu` from each event's time after one recorded at the start, on an idle GPU). The
    GPU reaches evaluation `i` `lag_i = t_gpu(start_i) - t_host(start_i)` after the host queued it: while
    the host runs ahead, the lag stays up (the launch queue is full); where the host's work is the
    bottleneck, the GPU drains the queue and the lag falls to about 0."""

    def __init__(self):
        self.marks: list[tuple[float, object, object]] = []   # (host start, GPU start event, GPU end event)
        self.saved = None

    def __enter__(self):
        if DEVICE.type != "cuda":   # no events to record: nothing wrapped, an empty summary
            return self
        base = comfy.model_base.BaseModel
        self.saved = real = base.apply_model
        marks = self.marks

        def apply_model(model, *args, **kwargs):
            host, start = time.perf_counter(), torch.cuda.Event(enable_timing=True)
            start.record()
            result = real(model, *args, **kwargs)
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            marks.append((host, start, end))
            return result

        sync()
        self.start = torch.cuda.Event(enable_timing=True)
        self.start.record()
        self.start_host = time.perf_counter()
        base.apply_model = apply_model
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            comfy.model_base.BaseModel.apply_model = self.saved
            self.end = torch.cuda.Event(enable_timing=True)
            self.end.record()

    def summary(self) -> dict:
        """Milliseconds: per evaluation its GPU time (`eval_ms`), the GPU's time since the previous one ended
        (`between_ms`: the sampler's own ops, the extraction's x0 image and voting, the next sampler call's
        setup, and any idle time; the first from the run's start) and the lag; their medians and sums, the
        GPU's time after the last evaluation, and how many evaluations the GPU reached < 2 ms after the host."""
        if not self.marks:
            return {}
        self.end.synchronize()
        ms = self.start.elapsed_time
        lag = [ms(start) - 1000 * (host - self.start_host) for host, start, _ in self.marks]
        spans = [(ms(start), ms(end)) for _, start, end in self.marks]
        evals = [e - s for s, e in spans]
        between = [spans[0][0]] + [s - e for (_, e), (s, _) in zip(spans, spans[1:])]
        return {"evaluations": len(spans), "eval_median_ms": round(statistics.median(evals), 2),
                "eval_sum_ms": round(sum(evals), 1), "between_sum_ms": round(sum(between), 1),
                "after_ms": round(ms(self.end) - spans[-1][1], 1), "lag_median_ms": round(statistics.median(lag), 1),
                "caught_up": sum(x < 2 for x in lag[1:]), "eval_ms": [round(x, 2) for x in evals],
                "between_ms": [round(x, 2) for x in between], "lag_ms": [round(x, 1) for x in lag]}


class StageTimer:
    """Wraps the extraction's stages with synchronised timers (attention, x0 image, SLIC, voting; the
    step-k run that SLIC overlaps, inside the x0 image the VAE network alone, and the voting's masks).

    SLIC runs in a worker thread beside the step-k run, so the stages add up to more than the whole."""

    def __init__(self, vae):
        self.STAGES = {"attention capture": (glue.sampling, "subject_maps"),
                       "x0 to image": (glue.sampling, "_x0_image"),
                       "VAE network (inside x0 to image)": (vae.first_stage_model, "decode"),
                       "superpixels (worker thread)": (glue.sampling, "slic_segments"),
                       "step k to block b (beside the superpixels)": (glue.sampling, "_capture_maps"),
                       "voting": (glue.sampling, "vote_owner"),
                       "voting, whole (_vote)": (glue.sampling, "_vote")}
        self.totals = dict.fromkeys(self.STAGES, 0.0)
        self.saved = {}

    def __enter__(self):
        for stage, (module, name) in self.STAGES.items():
            real = getattr(module, name)
            self.saved[stage] = (real, name in vars(module))   # a method of an instance is not in its vars
            setattr(module, name, self._wrap(stage, real))
        return self

    def _wrap(self, stage, real):
        def wrapped(*args, **kwargs):
            sync()
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                sync()
                self.totals[stage] += time.perf_counter() - start
        return wrapped

    def __exit__(self, *exc):
        for stage, (module, name) in self.STAGES.items():
            real, own = self.saved[stage]
            if own:
                setattr(module, name, real)
            else:
                delattr(module, name)


class StepKClock:
    """Each extraction's time from the end of step k-1 to its masks, measured inside the run without
    waiting for the GPU first: from the GPU's end of steps 0..k-1 (a CUDA event queued where the x0 image
    starts; off CUDA the host's clock after a sync) to the end of the voting. It holds everything the
    default path adds at step k: the x0 image, the step-k evaluation to block b beside SLIC, the rest of
    the sampler call, the voting."""

    def __init__(self):
        self.seconds: list[float] = []
        self.saved = {}

    def __enter__(self):
        sampling = glue.sampling
        self.saved = {name: getattr(sampling, name) for name in ("_x0_image", "_vote")}
        start = {}

        def x0_image(*args, **kwargs):
            start["mark"] = mark()
            return self.saved["_x0_image"](*args, **kwargs)

        def vote(*args, **kwargs):
            result = self.saved["_vote"](*args, **kwargs)
            self.seconds.append(since(start.pop("mark")))
            return result

        sampling._x0_image, sampling._vote = x0_image, vote
        return self

    def __exit__(self, *exc):
        for name, real in self.saved.items():
            setattr(glue.sampling, name, real)


def mark():
    """A point in time: a CUDA event queued on the current stream (the GPU reaches it when it has done
    what is queued before it), off CUDA the host's clock after a sync."""
    if DEVICE.type != "cuda":
        sync()
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def since(start) -> float:
    """Seconds from `mark()`'s `start` to now (on CUDA: to an event queued now, after waiting for it)."""
    if DEVICE.type != "cuda":
        sync()
        return time.perf_counter() - start
    end = mark()
    end.synchronize()
    return start.elapsed_time(end) / 1000


@contextlib.contextmanager
def unfused():
    """Inside: every LoRA term added in its own layer, as without Triton; a FreeFuse model loaded inside
    packs each fused layer's up projections into one matmul."""
    saved = glue.injection.FUSED_DEVICES
    glue.injection.FUSED_DEVICES = frozenset()
    try:
        yield
    finally:
        glue.injection.FUSED_DEVICES = saved


def fuses() -> bool:
    """Whether the default path here adds terms in the GELU and q/k norm (so an unfused row differs)."""
    return DEVICE.type in glue.injection.FUSED_DEVICES


def unfused_setup(bench: Bench, names, setup):
    """`setup` over a FreeFuse model of the same LoRAs loaded without the fused layout."""
    with unfused():
        return dataclasses.replace(setup, model=bench.freefuse_model(names))


def host_side_copy_ms(mib: int = 13, repeats: int = 20) -> float | None:
    """Host time of one non-blocking copy from pinned memory to the GPU (a block's LoRA terms are about
    13 MiB): microseconds where the copy is asynchronous, the transfer itself where the platform makes
    it synchronous."""
    if DEVICE.type != "cuda":
        return None
    source = torch.empty(mib * 2**19, dtype=torch.bfloat16).pin_memory()
    target = torch.empty_like(source, device=DEVICE)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        target.copy_(source, non_blocking=True)
        times.append(time.perf_counter() - start)
    sync()
    return 1000 * statistics.median(times)


def first_k_steps(setup, step: int, block: int):
    """Stage 1's sampler call without its step k (steps 0..k-1, LoRAs joint, on the clone stage 1 samples):
    what the default path runs anyway, so the extraction's cost is what it adds over this. (A plain KSampler
    on the FreeFuse model is no baseline: with no evaluation's `CallMasks` it adds every term in its layer.)"""
    sampling = glue.sampling
    model, _ = sampling.capture_model(setup, block, True, (), step)
    return lambda: sampling.run_sampler(model, setup, sampling.noise_of(setup), sampling.latent_image_of(setup), None,
                                        last_step=step, force_full_denoise=False)


def unfused_rows(bench: Bench, names, setup, rows: dict, todo: str, repeats: int) -> float | None:
    """Rows c-unfused and d-unfused; returns the latents' max |difference| of continue, default against
    unfused, on the same masks."""
    plain = unfused_setup(bench, names, setup)
    diff = None
    if "c" in todo:   # the same masks both ways: an extraction's vote could flip on a rounding difference
        masks = bench.freefuse(setup, "continue")[1]
        default = glue.masked.sample_masked(masks, "continue")["samples"]
        with unfused():
            in_layer = glue.masked.sample_masked(dataclasses.replace(masks, setup=plain), "continue")["samples"]
            rows["c-unfused continue, every term in its layer"] = measure(
                lambda: bench.freefuse(plain, "continue"), repeats, "c-unfused")
        diff = float((default.float() - in_layer.float()).abs().max())
        note(f"continue, default (terms in the GELU and q/k norm) vs unfused: max |diff| of the latents {diff} "
             f"(latents' max |value| {float(in_layer.abs().max()):.3f})")
    if "d" in todo:
        with unfused():
            rows["d-unfused restart, every term in its layer"] = measure(
                lambda: bench.freefuse(plain, "restart"), repeats, "d-unfused")
    return diff


def main_part(bench: Bench):
    steps, size, rank, repeats, todo = ARGS.steps, ARGS.size, ARGS.rank, ARGS.repeats, ARGS.rows
    block = 1 if ARGS.small else 16
    rows, first = {}, {}
    names = bench.loras(rank, 2)
    note("LoRA files written")
    ours = bench.freefuse_model(names)
    note("FreeFuse LoRAs loaded")
    setup = bench.setup(ours, 2, size, steps)
    if "a" in todo:
        rows["a no LoRA"] = measure(lambda: bench.stock(bench.base, setup), repeats, "a")
    if "b" in todo:
        first["b merged"] = timed(lambda: bench.stock(bench.merged(names), setup))[0]
        merged = bench.merged(names)
        rows["b stock LoRA (merged)"] = measure(lambda: bench.stock(merged, setup), repeats, "b")
    if "c" in todo:
        first["c FreeFuse continue"] = timed(
            lambda: bench.freefuse(bench.setup(bench.freefuse_model(names), 2, size, steps), "continue"))[0]
        rows["c FreeFuse continue"] = measure(lambda: bench.freefuse(setup, "continue"), repeats, "c")
    if "d" in todo:
        rows["d FreeFuse restart (default)"] = measure(lambda: bench.freefuse(setup, "restart"), repeats, "d")
    if "B" in todo:   # b once more after the FreeFuse rows: did the machine drift while they ran?
        again = bench.merged(names)
        rows["b again, after the FreeFuse rows"] = measure(lambda: bench.stock(again, setup), repeats, "b again")
    parity = resident_gib = None
    if "p" in todo:  # c with every LoRA term resident on the GPU (no prefetch): cost and parity
        prefetched = bench.freefuse(setup, "continue")[0]["samples"]

        def resident_row():
            samples = bench.freefuse(setup, "continue")[0]["samples"]
            diff = float((prefetched.float() - samples.float()).abs().max())
            note(f"continue, prefetched vs resident LoRA terms: max |diff| of the latents {diff}")
            return diff, measure(lambda: bench.freefuse(setup, "continue"), repeats, "c'"), lora_gib(ours)["gpu"]
        parity, rows["c' continue, LoRA terms resident"], resident_gib = resident(resident_row, ours)
    unfused_diff = unfused_error = None
    if "u" in todo and fuses():   # c and d with every term added in its layer
        try:
            unfused_diff = unfused_rows(bench, names, setup, rows, todo, repeats)
        except Exception as error:   # as for any row: it must not cost the call the others
            unfused_error = f"{type(error).__name__}: {error}"
            note(f"the -unfused rows failed: {unfused_error}")
    stage_times = {}
    default_px = glue.sampling.SUPERPIXEL_PX
    for px in dict.fromkeys((default_px, 192)):   # the default, and the size before it
        with StageTimer(bench.vae) as stages:
            glue.sampling.extract(setup, bench.vae, 6, block, True, 1.0, "vae", px)
        stage_times[px] = stages.totals
    pairs = []
    with StepKClock() as clock:
        for _ in range(ARGS.extraction_repeats):   # an extraction, then its first k steps alone, in turn
            pairs.append((timed(lambda: glue.sampling.extract(setup, bench.vae, 6, block, True, 1.0, "vae"))[0],
                          timed(first_k_steps(setup, 6, block))[0]))
    added = statistics.median(e - k for e, k in pairs)
    note("extraction, first k steps alone: " + ", ".join(f"{e:.3f} s, {k:.3f} s" for e, k in pairs)
         + "; step k to the masks, in the run: " + ", ".join(f"{t:.3f} s" for t in clock.seconds)
         + f"; stages {stage_times}")
    if "f" in todo:   # last but e: the other pack's hooks must not touch the rows before it
        if not ARGS.existing_pack:
            raise SystemExit("row f needs --existing-pack FOLDER (yaoliliu/FreeFuse's freefuse_comfyui)")
        row_f = existing_pack.Row(existing_pack.load(ARGS.existing_pack), bench.base, names, WORDS[:2],
                                  setup.positive[0][1][glue.prompt.PROMPT_KEY].text, DIMS["depth"] - 1)
        rows["f existing FreeFuse pack"] = measure(lambda: row_f.run(setup, bench.stock), repeats, "f")
    if "e" in todo:
        _, masks = bench.freefuse(setup, "restart")
        rows["e core hooks + masked conds"] = measure(lambda: bench.hooks(names, setup, masks), 1, "e",
                                                      warm_up=hooks_warm_up(bench, names, setup, masks))
    b = rows["b stock LoRA (merged)"][0]
    return {
        "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
        "kernel": platform.release(), "host_side_copy_ms_13mib": host_side_copy_ms(),
        "dynamic_vram": not ARGS.disable_dynamic_vram, "fp8": ARGS.fp8, "steps": steps, "size": size, "rank": rank,
        "rows": {k: {"seconds": v[0], "peak_gib": v[1], "over_b": v[0] / b, "runs": v[2], "gen2_gc_s": v[3],
                     "evaluations": v[4]}
                 for k, v in rows.items()},
        "first_run_after_lora_change": first,
        "superpixel_px": default_px,
        "extraction_breakdown_seconds": stage_times[default_px],
        "extraction_breakdown_seconds_192px": stage_times[192],
        "lora_gib": lora_gib(ours),
        "lora_gib_on_gpu_resident": resident_gib,
        "prefetched_vs_resident_max_abs_diff": parity,
        "default_vs_unfused_max_abs_diff": unfused_diff,
        "unfused_rows_error": unfused_error,
        "extraction_over_first_k_steps_seconds": added,
        "extraction_pairs_seconds": pairs,
        "step_k_to_masks_seconds": clock.seconds,
        "step_k_to_masks_median_seconds": statistics.median(clock.seconds),
    }


def resident(run, model):
    """`run()` with every LoRA term of `model` resident on the GPU (no prefetch), the models unloaded before
    and after so the switch reloads them."""
    staged = glue.injection.STAGED_DEVICES
    glue.injection.STAGED_DEVICES = frozenset()
    mm.unload_all_models()
    try:
        return run()
    finally:
        glue.injection.STAGED_DEVICES = staged
        mm.unload_all_models()
        injection_of(model).cast.clear()


def subjects_part(bench: Bench):
    """b, c, d (and c with resident terms, row p) with each of --subjects at --size, 2 only with row e, which
    main times; e after them (each region one more pass of the hooked model: minutes a run), warmed up
    by `hooks_warm_up`."""
    out = {}
    for subjects in (int(n) for n in ARGS.subjects.split(",")):
        names = bench.loras(ARGS.rank, subjects)
        setup = bench.setup(bench.freefuse_model(names), subjects, ARGS.size, ARGS.steps)
        row = out[subjects] = {}
        if "b" in ARGS.rows and (subjects > 2 or "e" in ARGS.rows):
            merged = bench.merged(names)
            row["b"] = measure(lambda: bench.stock(merged, setup), ARGS.repeats, f"b {subjects}")
            row["c"] = measure(lambda: bench.freefuse(setup, "continue"), ARGS.repeats, f"c {subjects}")
            row["d"] = measure(lambda: bench.freefuse(setup, "restart"), ARGS.repeats, f"d {subjects}")
            if "p" in ARGS.rows:
                row["c resident"] = resident(lambda: measure(lambda: bench.freefuse(setup, "continue"), ARGS.repeats,
                                                             f"c {subjects}, terms resident"), setup.model)
        if "e" in ARGS.rows:
            _, masks = bench.freefuse(setup, "restart")
            row["e"] = measure(lambda: bench.hooks(names, setup, masks), 1, f"e {subjects}",
                               warm_up=hooks_warm_up(bench, names, setup, masks))
    return out


def hooks_warm_up(bench: Bench, names, setup, masks):
    """Row e's warm-up: the same graph for 2 steps (the hook LoRAs read from disk, every hooked weight patched
    once), since its run takes minutes and the call's limit is 10."""
    short = dataclasses.replace(setup, steps=2)
    return lambda: bench.hooks(names, short, masks)


def sizes_part(bench: Bench):
    """b and c at each of --sizes px, then b, c, d at each of --ranks (2 subjects, --size)."""
    out = {"sizes": {}, "ranks": {}}
    names = bench.loras(ARGS.rank, 2)
    ours = bench.freefuse_model(names)
    merged = bench.merged(names)
    for size in (int(n) for n in ARGS.sizes.split(",") if n):
        setup = bench.setup(ours, 2, size, ARGS.steps)
        out["sizes"][size] = {"b": measure(lambda: bench.stock(merged, setup), 1, f"b {size}px"),
                              "c": measure(lambda: bench.freefuse(setup, "continue"), 1, f"c {size}px")}
    for rank in (int(n) for n in ARGS.ranks.split(",") if n):
        names = bench.loras(rank, 2)
        setup = bench.setup(bench.freefuse_model(names), 2, ARGS.size, ARGS.steps)
        merged = bench.merged(names)
        out["ranks"][rank] = {"b": measure(lambda: bench.stock(merged, setup), 1, f"b rank {rank}"),
                              "c": measure(lambda: bench.freefuse(setup, "continue"), 1, f"c rank {rank}"),
                              "d": measure(lambda: bench.freefuse(setup, "restart"), 1, f"d rank {rank}")}
    return out


def profile_part(bench: Bench):
    """torch.profiler over 8 steps of the merged model (b) and the masked model (c's stage 2), and where
    the default fuses, the masked model with every term in its layer."""
    names = bench.loras(ARGS.rank, 2)
    setup = bench.setup(bench.freefuse_model(names), 2, ARGS.size, 8)
    masks = glue.sampling.extract(setup, bench.vae, 6, 1 if ARGS.small else 16, True, 1.0, "vae")
    out = {}
    models = [("b merged", bench.merged(names), contextlib.nullcontext),
              ("c masked", glue.masked.masked_model(masks), contextlib.nullcontext)]
    if fuses():
        plain = dataclasses.replace(masks, setup=unfused_setup(bench, names, setup))
        models.append(("c-unfused masked, every term in its layer", glue.masked.masked_model(plain), unfused))
    for name, model, context in models:
        run = lambda: nodes.common_ksampler(model, 0, 8, 1.0, "euler", "simple", setup.positive,  # noqa: E731
                                            setup.positive, setup.latent)
        with context():
            profiled = profile_run(run)
        out[name] = {"wall_s": profiled[0], "gpu_busy_s": profiled[1], "kernels_per_step": profiled[3] / 8}
        print(f"== {name}: wall {profiled[0]:.3f} s (profiled), GPU kernel time {profiled[1]:.3f} s, "
              f"{profiled[3] / 8:.0f} kernels a step\n{profiled[2]}")
    return out


def profile_run(run):
    """`(wall seconds, GPU kernel seconds, table, GPU kernels launched)` of `run()` under torch.profiler, after
    one run unprofiled."""
    from torch.profiler import ProfilerActivity, profile
    run()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.type == "cuda" else [])
    sync()
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        run()
        sync()
    wall = time.perf_counter() - start
    table = prof.key_averages().table(sort_by="self_cuda_time_total" if DEVICE.type == "cuda"
                                      else "self_cpu_time_total", row_limit=30, max_name_column_width=64)
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]   # not the ops too
    return wall, sum(e.self_device_time_total for e in kernels) / 1e6, table, sum(e.count for e in kernels)


def pairs_part(bench: Bench):
    """c, c-unfused, d, d-unfused timed in turn, --repeats rounds after one warm-up round, so drift on one
    machine lands on every row alike; b before them as a block (switching between the merged model and
    the FreeFuse one reloads weights: 30 s runs). Medians and minimums per row, and each over b's."""
    names = bench.loras(ARGS.rank, 2)
    setup = bench.setup(bench.freefuse_model(names), 2, ARGS.size, ARGS.steps)
    merged = bench.merged(names)
    bench.stock(merged, setup)
    times = {"b": [timed(lambda: bench.stock(merged, setup))[0] for _ in range(ARGS.repeats)]}
    plain = unfused_setup(bench, names, setup)
    default = (setup, contextlib.nullcontext)
    rows = {"c": ("continue", *default), "c-unfused": ("continue", plain, unfused), "d": ("restart", *default),
            "d-unfused": ("restart", plain, unfused)}
    times.update({name: [] for name in rows})
    for round_ in range(ARGS.repeats + 1):
        for name, (mode, row_setup, context) in rows.items():
            with context():
                seconds = timed(lambda: bench.freefuse(row_setup, mode))[0]
            if round_:
                times[name].append(seconds)
        if round_:
            note(f"round {round_}: " + ", ".join(f"{n} {t[-1]:.3f} s" for n, t in times.items() if n != "b"))
    out = {name: {"seconds": t, "median": statistics.median(t), "min": min(t)} for name, t in times.items()}
    for name, row in out.items():
        row["median_over_b"] = row["median"] / out["b"]["median"]
        row["min_over_b"] = row["min"] / out["b"]["min"]
    return out


def host_part(bench: Bench):
    """Is the masked sampler bound by the GPU or by the host's Python? 8 steps of b (merged), c's masked
    model and, where the default fuses, c-unfused's, at --size and at 128 px (64 image tokens: the GPU's
    work is about the weights' read, so a step's wall time is about its host time); at --size also the GPU
    kernel time and the kernels launched a step under torch.profiler (its kernel table in host_kernels_*.txt;
    the count asks whether the masked rows' shorter lag is a launch queue of the same length holding more,
    smaller kernels); cProfile of the masked
    models' 8 steps at 128 px (host_calls_*.txt)."""
    import io
    names = bench.loras(ARGS.rank, 2)
    ours, merged = bench.freefuse_model(names), bench.merged(names)
    out, runs = {}, []
    for size in (128, ARGS.size):
        setup = bench.setup(ours, 2, size, 8)
        masks = glue.sampling.extract(setup, bench.vae, 6, 1 if ARGS.small else 16, True, 1.0, "vae")
        runs.append(("b", size, merged, setup, contextlib.nullcontext))
        runs.append(("c", size, glue.masked.masked_model(masks), setup, contextlib.nullcontext))
        if fuses():
            plain = dataclasses.replace(masks, setup=unfused_setup(bench, names, setup))
            runs.append(("c-unfused", size, glue.masked.masked_model(plain), setup, unfused))
    for name, size, model, setup, context in sorted(runs, key=lambda run: run[0] != "b"):   # b's weights once
        def run():
            return nodes.common_ksampler(model, 0, 8, 1.0, "euler", "simple", setup.positive, setup.positive,
                                         setup.latent)
        with context():
            run()
            walls = [timed(run)[0] for _ in range(3)]
            row = out.setdefault(name, {})[size] = {"step_ms": 1000 * statistics.median(walls) / 8}
            if size == ARGS.size:
                wall, busy, table, kernels = profile_run(run)
                row.update(profiled_step_ms=1000 * wall / 8, gpu_kernel_step_ms=1000 * busy / 8,
                           kernels_per_step=kernels / 8)
                (Path(ARGS.out) / f"host_kernels_{name}.txt").write_text(table)
            if size == 128 and name != "b":
                text = io.StringIO()
                cprofile_run(run, text).sort_stats("tottime").print_stats(40)
                (Path(ARGS.out) / f"host_calls_{name}.txt").write_text(text.getvalue())
        note(f"{name} at {size} px: {row}")
    return out


def cprofile_run(run, stream):
    """`pstats.Stats` (printing to `stream`) of one `run()` under cProfile, synchronised at its end."""
    import cProfile
    import pstats
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    sync()
    profiler.disable()
    return pstats.Stats(profiler, stream=stream)


def calls_part(bench: Bench):
    """cProfile (host time, GPU waits included) of one extraction and one continue pass, warm."""
    import io
    names = bench.loras(ARGS.rank, 2)
    setup = bench.setup(bench.freefuse_model(names), 2, ARGS.size, ARGS.steps)
    out = {}
    block = 1 if ARGS.small else 16
    for name, run in (("extract", lambda: glue.sampling.extract(setup, bench.vae, 6, block, True, 1.0, "vae")),
                      ("continue", lambda: bench.freefuse(setup, "continue"))):
        run()
        sync()
        text = io.StringIO()
        stats = cprofile_run(run, text)
        stats.sort_stats("cumulative").print_stats(45)
        stats.print_stats("model_management|comfy/sd.py|model_patcher|freefuse_|sample.py|hooks", 60)
        (Path(ARGS.out) / f"calls_{name}.txt").write_text(text.getvalue())
        out[name] = stats.total_tt
    return out


class GcTimer:
    """Seconds spent in Python's cyclic garbage collector while inside, per generation collected."""

    def __init__(self):
        self.seconds = {0: 0.0, 1: 0.0, 2: 0.0}
        self.started = None

    def _callback(self, phase, info):
        if phase == "start":
            self.started = time.perf_counter()
        elif self.started is not None:
            self.seconds[info["generation"]] += time.perf_counter() - self.started
            self.started = None

    def __enter__(self):
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self._callback)


def median_ms(run, repeats: int = 5) -> float:
    return 1000 * statistics.median(timed(run)[0] for _ in range(repeats))


def extraction_part(bench: Bench):
    """Where a warm extraction's time goes, 2 subjects at --size: --extraction-repeats pairs (the extraction,
    then its first k steps alone) with the garbage collector's time in each; the stages of 3 extractions,
    ComfyUI's model loads and injections among them; SLIC and the voting (on random maps of the real shape)
    alone, the voting also right after SLIC and with one torch thread."""
    names = bench.loras(ARGS.rank, 2)
    setup = bench.setup(bench.freefuse_model(names), 2, ARGS.size, ARGS.steps)
    block, step = (1 if ARGS.small else 16), 6
    extract = lambda: glue.sampling.extract(setup, bench.vae, step, block, True, 1.0, "vae")  # noqa: E731
    first_k = first_k_steps(setup, step, block)
    masks = extract()
    first_k()
    pairs = []
    for _ in range(ARGS.extraction_repeats):
        with GcTimer() as gc_extract, StepKClock() as clock:
            e = timed(extract)[0]
        with GcTimer() as gc_first:
            k = timed(first_k)[0]
        pairs.append({"extraction": e, "first_k": k, "added": e - k, "step_k_to_masks": clock.seconds[0],
                      "gc_extraction": gc_extract.seconds, "gc_first_k": gc_first.seconds})
    note("pairs (extraction - first k, ms): " + ", ".join(f"{1000 * p['added']:.0f}" for p in pairs)
         + "; step k to the masks, in the run (ms): " + ", ".join(f"{1000 * p['step_k_to_masks']:.0f}" for p in pairs))
    timer = StageTimer(bench.vae)
    timer.STAGES.update({"free_memory": (mm, "free_memory"),
                         "soft_empty_cache": (mm, "soft_empty_cache"),
                         "sampler calls (run_sampler)": (glue.sampling, "run_sampler"),
                         "load_models_gpu": (mm, "load_models_gpu"),
                         "inject_model": (comfy.model_patcher.ModelPatcher, "inject_model"),
                         "eject_model": (comfy.model_patcher.ModelPatcher, "eject_model")})
    timer.totals = dict.fromkeys(timer.STAGES, 0.0)
    with timer:
        for _ in range(3):
            extract()
    stages = {name: seconds / 3 for name, seconds in timer.totals.items()}
    sampling = glue.sampling
    subjects = sampling.subject_loras(setup.model)
    token_sets = [list(tokens) for tokens in masks.subject_tokens]   # the extraction's own, in mask order
    image, size = masks.image, tuple(8 * d for d in setup.latent["samples"].shape[-2:])
    slic = lambda: sampling._superpixels(image, 1.0, size)  # noqa: E731
    segments = slic()
    smaller = {px: torch.nn.functional.interpolate(image.movedim(-1, 1), size=(px, px), mode="area").movedim(1, -1)
               for px in (192, 128)}
    maps = torch.rand(1, len(subjects), masks.token_masks.shape[1])
    vote = lambda: sampling._vote(subjects, token_sets, maps, image, segments, step, block, setup,  # noqa: E731
                                  masks.latent_at_step)

    def vote_after_slic():
        slic()
        sync()
        start = time.perf_counter()
        vote()
        return time.perf_counter() - start

    def one_thread(run):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return median_ms(run)
        finally:
            torch.set_num_threads(threads)

    alone = {"SLIC alone": median_ms(slic),
             **{f"SLIC alone at {px} px": median_ms(lambda: sampling._superpixels(smaller[px], 1.0, size))
                for px in smaller},
             "voting alone (_vote)": median_ms(vote),
             "voting right after SLIC": 1000 * statistics.median(vote_after_slic() for _ in range(5)),
             "voting, one torch thread": one_thread(vote),
             "torch threads": torch.get_num_threads()}
    note(f"alone (ms): {alone}")
    added = statistics.median(p["added"] for p in pairs)
    return {"device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu", "size": ARGS.size,
            "steps": ARGS.steps, "pairs": pairs, "added_median_s": added,
            "step_k_to_masks_median_s": statistics.median(p["step_k_to_masks"] for p in pairs),
            "stages_per_extraction_s": stages, "alone_ms": alone}


def staging_part(bench: Bench):
    """Where 4 subjects' masked steps go: 8 steps of c's masked model with the LoRA terms prefetched (the
    default) and resident, wall and GPU kernel time each, beside b's; and the pinned-host-to-GPU copy rate
    (the prefetch moves every layer's terms, 4 x 0.42 GiB at rank 32, once a step)."""
    subjects = max(int(n) for n in ARGS.subjects.split(","))
    names = bench.loras(ARGS.rank, subjects)
    ours = bench.freefuse_model(names)
    setup = bench.setup(ours, subjects, ARGS.size, 8)
    masks = glue.sampling.extract(setup, bench.vae, 6, 1 if ARGS.small else 16, True, 1.0, "vae")
    model = glue.masked.masked_model(masks)
    merged = bench.merged(names)
    out = {"subjects": subjects, "lora_gib": lora_gib(ours)}

    def step_times(patcher):
        run = lambda: nodes.common_ksampler(patcher, 0, 8, 1.0, "euler", "simple", setup.positive,  # noqa: E731
                                            setup.positive, setup.latent)
        busy = profile_run(run)[1]
        return {"step_ms": median_ms(run, 3) / 8, "gpu_kernel_step_ms": 1000 * busy / 8}
    out["b merged"] = step_times(merged)
    out["c masked, prefetched"] = step_times(model)
    out["c masked, resident"] = resident(lambda: step_times(model), ours)
    if DEVICE.type == "cuda":
        source = torch.empty(2**29, dtype=torch.bfloat16).pin_memory()
        target = torch.empty_like(source, device=DEVICE)
        out["pinned_copy_gib_per_s"] = 1.0 / (median_ms(lambda: target.copy_(source, non_blocking=True)) / 1000)
    note(f"staging: {out}")
    return out


def main():
    note(f"building the model (the clock's 0 is {time.time() - (time.perf_counter() - T0):.1f} s since the epoch)")
    bench = Bench(torch.float8_e4m3fn if ARGS.fp8 else torch.bfloat16)
    note("model built")
    out = Path(ARGS.out)
    out.mkdir(parents=True, exist_ok=True)
    if ARGS.part == "main":
        result = main_part(bench)
        suffix = ("_nodyn" if ARGS.disable_dynamic_vram else "") + ("_fp8" if ARGS.fp8 else "")
        (out / f"main{suffix}.json").write_text(json.dumps(result, indent=1))
        b = result["rows"]["b stock LoRA (merged)"]["seconds"]
        print(f"device: {result['device']}, dynamic VRAM {result['dynamic_vram']}, fp8 {ARGS.fp8}, {ARGS.size} px, "
              f"{ARGS.steps} steps, rank {ARGS.rank}; first run after a LoRA change: "
              f"{result['first_run_after_lora_change']}")
        for name, row in result["rows"].items():
            print(f"{name:32s} {row['seconds']:8.3f} s  {row['over_b']:5.3f} x b  peak {row['peak_gib']:6.2f} GiB")
        for px in ("", "_192px"):
            print(f"extraction breakdown{px}:",
                  {k: round(v, 4) for k, v in result[f"extraction_breakdown_seconds{px}"].items()})
        print(f"LoRA tensors: {result['lora_gib']}; all resident on the GPU: {result['lora_gib_on_gpu_resident']} "
              f"GiB; prefetched vs resident latents max |diff| {result['prefetched_vs_resident_max_abs_diff']}")
        print(f"kernel {result['kernel']}; host time of a 13 MiB pinned copy: {result['host_side_copy_ms_13mib']} ms")
        print(f"default (terms in the GELU and q/k norm) vs every term in its layer: latents max |diff| "
              f"{result['default_vs_unfused_max_abs_diff']}; error of the -unfused rows: "
              f"{result['unfused_rows_error']}")
        print(f"extraction over first k steps: {result['extraction_over_first_k_steps_seconds']:.3f} s "
              f"= {result['extraction_over_first_k_steps_seconds'] / b:.4f} of b")
        print(f"extraction, step k to the masks in the run: {result['step_k_to_masks_median_seconds']:.3f} s "
              f"= {result['step_k_to_masks_median_seconds'] / b:.4f} of b")
        rows = result["rows"]
        if "d FreeFuse restart (default)" in rows:
            print(f"freefuse / merged = {rows['d FreeFuse restart (default)']['over_b']:.2f} (restart, default)")
        if "c FreeFuse continue" in rows:
            print(f"freefuse continue / merged = {rows['c FreeFuse continue']['over_b']:.2f}")
    else:
        parts = {"subjects": subjects_part, "sizes": sizes_part, "profile": profile_part, "calls": calls_part,
                 "pairs": pairs_part, "host": host_part,
                 "extraction": extraction_part, "staging": staging_part}
        result = parts[ARGS.part](bench)
        (out / f"{ARGS.part}.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result))


if __name__ == "__main__":
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        main()
