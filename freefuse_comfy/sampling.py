"""The sampling driver: stage 1 (masks from step k) and stage 2 (masked LoRA sampling).

Appendix A: steps `0..k-1` run with the LoRAs joint and unmasked; in the evaluation of step `k`
the joint attention of double block `b` is read and the masks are voted; every later evaluation
multiplies each LoRA's output by its mask.

Stage 1 is one call of ComfyUI's own sampler on a patched clone of the model, with `last_step = k`
(the latent kept with its leftover noise, as KSamplerAdvanced does). A sampler-sample wrapper runs the
sampler over steps `0..k-1`, then, in the same call (the model loaded and the conditioning processed
once), evaluates step `k` from the sampler's latent, stopped inside double block `b` once `q, k` are
read: the blocks after `b` never run. Block `b`'s replacement passes through (to the replacement it took
the place of, if any) until it is armed for that evaluation, and checks that its sigma is `sigmas[k]` of
the schedule. `x0` for the superpixels is the prediction of step `k-1`, the last complete evaluation (the
sampler's step callback hands it over); its decode is queued on the GPU before step `k`, so SLIC works on
the CPU in a worker thread while the GPU evaluates step `k`, and the host never waits for the GPU before
step `k` is queued.

Stage 2 either samples again from step 0 with the same seed and schedule ("restart", default) or
goes on from the step-`k` latent ("continue"). Masks reach the layers through a diffusion-model
wrapper that sets `injection.CallMasks` for each evaluation and resets it after.
"""
from __future__ import annotations

import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ..freefuse_core import (
    find_subject_tokens,
    owner_to_pixel_masks,
    owner_to_token_masks,
    quick_gil_handoff,
    resize_owner,
    slic_segments,
    subject_maps,
    vote_owner,
)
from .host import WrappersMP, comfy_model_management, comfy_sample, comfy_samplers, latent_preview
from .injection import CallMasks, CallScope, loras_of
from .loras import FreeFuseLora, require_flux
from .prompt import prompt_of

EXTRACT_NODE = "FreeFuse Mask Extract (step/block)"
# Long side of the x0 copy SLIC segments (ours). At FLUX's 1024 px and sqrt(H W) = 1024 superpixels, 128 px
# gives each superpixel 4 x 4 px of the copy; the toy world at that density (64 px of its 256) votes as at its
# full size (docs/fidelity.md). SLIC there takes under half its time at 192 px (bench/slic_bench.py), where
# on the benchmark's hosts it took about as long as step k's run to block b beside it.
SUPERPIXEL_PX = 128
SAMPLER_NODE = "FreeFuse Masked LoRA Sampler"
WRAPPER_KEY = "freefuse"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingSetup:
    """Everything both passes share, so seed, steps and schedule cannot drift between them."""

    model: object
    positive: list
    negative: list
    latent: dict
    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    denoise: float


@dataclass(frozen=True)
class FreeFuseMasks:
    """The voted masks of one extraction, with what the masked sampler needs to go on."""

    subjects: tuple[str, ...]        # subject names, in mask order
    token_masks: torch.Tensor        # [B, N, S] hard masks on the token grid
    owner: torch.Tensor              # [B, h, w] each pixel's subject (mask index) on the image SLIC ran on
    image: torch.Tensor              # [B, h, w, 3] the step-(k-1) x0 image SLIC ran on (h, w <= H, W)
    grid: tuple[int, int]
    step: int
    block: int
    setup: SamplingSetup
    latent_at_step: dict             # the latent after steps 0..k-1, with its leftover noise
    empty_subjects: tuple[str, ...] = field(default=())
    subject_tokens: tuple[tuple[int, ...], ...] = field(default=())   # I_l: T5 token indices, mask order

    @functools.cached_property
    def pixel_masks(self) -> torch.Tensor:
        """`[B, S, H, W]` hard masks at the image's full size, made on first read: sampling needs the token
        masks alone, so only a reader such as Mask Preview pays for the full-size masks."""
        size = _pixels(self.setup.latent)
        return torch.stack([owner_to_pixel_masks(resize_owner(owner, size), len(self.subjects))
                            for owner in self.owner])


class _Captured(Exception):
    """Ends the step-k evaluation right after double block b's attention was read."""

    def __init__(self, maps: torch.Tensor):
        super().__init__("FreeFuse attention captured")
        self.maps = maps


def _loras_wrapper(loras_on: bool):
    def wrapper(executor, *args, **kwargs):
        with CallScope(CallMasks(loras_on=loras_on)):
            return executor(*args, **kwargs)
    return wrapper


class _Capture:
    """A `dit` double-block replacement that, once armed, reads post-RoPE q, k of that block and stops;
    unarmed (or on a batch with no conditional rows) it runs the block as it is, through the replacement
    it took the place of if there was one."""

    def __init__(self, grid: tuple[int, int], token_sets, sigma_k: float, previous=None):
        self.grid, self.token_sets, self.sigma_k, self.previous = grid, token_sets, sigma_k, previous
        self.armed = False

    def override(self, func, q, k, v, heads, **kwargs):
        opts = kwargs["transformer_options"]
        chunks = opts["cond_or_uncond"]
        per_chunk = q.shape[0] // len(chunks)
        rows = [c * per_chunk + i for c, kind in enumerate(chunks) if kind == 0 for i in range(per_chunk)]
        raise _Captured(subject_maps(q[rows], k[rows], opts["freefuse_txt_len"], self.grid, self.token_sets))

    def replace_block(self, args, extra):
        if not self.armed or 0 not in args["transformer_options"].get("cond_or_uncond", [0]):
            return extra["original_block"](args) if self.previous is None else self.previous(args, extra)
        opts = args["transformer_options"]
        sigma = float(opts["sigmas"].flatten()[0])
        if abs(sigma - self.sigma_k) > 1e-4 * max(1.0, abs(self.sigma_k)):
            raise RuntimeError(f"{EXTRACT_NODE}: attention capture ran at sigma {sigma:.5f}, expected "
                               f"the step's sigma {self.sigma_k:.5f}; this is a bug, please report it.")
        opts = {**opts, "optimized_attention_override": self.override, "freefuse_txt_len": args["txt"].shape[1]}
        return extra["original_block"]({**args, "transformer_options": opts})


def validate_settings(model, steps: int, step: int, block: int, denoise: float) -> None:
    flux = require_flux(model, EXTRACT_NODE)
    if not 1 <= step < steps:
        raise ValueError(f"{EXTRACT_NODE}: input 'mask_step' is {step}, but it must be at least 1 and "
                         f"less than 'steps' ({steps}). The paper uses step 6 of 28.")
    if not 0 <= block < len(flux.double_blocks):
        raise ValueError(f"{EXTRACT_NODE}: input 'mask_block' is {block}, but this model has "
                         f"{len(flux.double_blocks)} double blocks (0..{len(flux.double_blocks) - 1}). "
                         "FLUX.1-dev uses block 16.")
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"{EXTRACT_NODE}: input 'denoise' is {denoise}; it must be in (0, 1].")


def subject_loras(model) -> tuple[FreeFuseLora, ...]:
    loras = loras_of(model)
    subjects = tuple(lora for lora in loras if lora.is_subject)
    if not subjects:
        raise ValueError(f"{EXTRACT_NODE}: input 'model' carries no FreeFuse LoRA with activation words. "
                         "Load each character LoRA with 'FreeFuse LoRA Loader' and type its activation "
                         "word(s).")
    return subjects


def noise_of(setup: SamplingSetup) -> torch.Tensor:
    return comfy_sample.prepare_noise(latent_image_of(setup), setup.seed, setup.latent.get("batch_index"))


def latent_image_of(setup: SamplingSetup) -> torch.Tensor:
    return comfy_sample.fix_empty_latent_channels(setup.model, setup.latent["samples"])


def run_sampler(model, setup: SamplingSetup, noise, latent_image, callback, **kwargs) -> torch.Tensor:
    return comfy_sample.sample(model, noise, setup.steps, setup.cfg, setup.sampler_name, setup.scheduler,
                               setup.positive, setup.negative, latent_image, denoise=setup.denoise,
                               noise_mask=setup.latent.get("noise_mask"), callback=callback,
                               seed=setup.seed, **kwargs)


def sigmas_of(setup: SamplingSetup) -> torch.Tensor:
    return comfy_samplers.KSampler(setup.model, steps=setup.steps, device="cpu",
                                   sampler=setup.sampler_name, scheduler=setup.scheduler,
                                   denoise=setup.denoise).sigmas


def extract(setup: SamplingSetup, vae, step: int, block: int, loras_before: bool,
            sigma: float, image_source: str, superpixel_px: int = SUPERPIXEL_PX) -> FreeFuseMasks:
    """Stage 1: steps 0..k-1, then attention at double block `block` of step `step`, then masks."""
    validate_settings(setup.model, setup.steps, step, block, setup.denoise)
    if image_source == "vae":
        require_image_vae(vae, setup.model)
    subjects = subject_loras(setup.model)
    prompt = prompt_of(setup.positive, EXTRACT_NODE)
    try:
        token_sets = find_subject_tokens(prompt.text, prompt.pieces, [(s.name, s.words) for s in subjects])
    except ValueError as error:
        raise ValueError(f"{EXTRACT_NODE}: the prompt of input 'positive' and the LoRAs' activation words do "
                         f"not fit: {error}. Write each subject's activation word in the prompt, or fix "
                         "activation_words in its FreeFuse LoRA Loader.") from error

    model, capture = capture_model(setup, block, loras_before, token_sets, step)
    stage = _StepK(capture, vae, image_source, superpixel_px, sigma, _pixels(setup.latent), step, block)
    model.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY, stage.wrapper)
    preview = latent_preview.prepare_callback(model, step)

    def callback(i, denoised, x, total):
        stage.x0 = denoised
        preview(i, denoised, x, total)

    samples = run_sampler(model, setup, noise_of(setup), latent_image_of(setup), callback, last_step=step,
                          force_full_denoise=False)
    if stage.maps is None:
        raise RuntimeError(f"{EXTRACT_NODE}: the sampler ended before step {step} was evaluated; another node "
                           "may wrap the sampler. Remove it, or please report this.")
    return _vote(subjects, token_sets, stage.maps, stage.image, stage.segments, step, block, setup,
                 {**setup.latent, "samples": samples})


def capture_model(setup: SamplingSetup, block: int, loras_before: bool, token_sets, step: int):
    """The clone stage 1 samples: LoRAs on or off per `loras_before`, double block `block` replaced by an
    unarmed `_Capture` for step `step`'s sigma."""
    options = setup.model.model_options.get("transformer_options", {})
    previous = options.get("patches_replace", {}).get("dit", {}).get(("double_block", block))
    capture = _Capture(_grid(setup.latent), token_sets, float(sigmas_of(setup)[step]), previous)
    model = setup.model.clone()
    model.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, _loras_wrapper(loras_before))
    model.set_model_patch_replace(capture.replace_block, "dit", "double_block", block)
    return model, capture


class _StepK:
    """The sampler-sample wrapper of stage 1: the sampler's steps `0..k-1`, then x0 of step `k-1` to an
    image, SLIC on it in a worker thread, and meanwhile step `k`'s evaluation up to block `b`.

    Nothing here waits for the GPU before step `k` is queued: the image is decoded on the device and copied
    to pinned host memory behind steps `0..k-1`, and the worker thread waits for that copy alone. So the
    host queues step `k` while the GPU still runs the steps before it, and SLIC starts once the image is
    there, not after the host has caught up with the GPU."""

    def __init__(self, capture: _Capture, vae, image_source: str, superpixel_px: int, sigma: float,
                 size: tuple[int, int], step: int, block: int):
        self.capture, self.vae, self.image_source, self.superpixel_px = capture, vae, image_source, superpixel_px
        self.sigma, self.size, self.step, self.block = sigma, size, step, block
        self.x0 = self.maps = self.image = self.segments = None

    def wrapper(self, executor, guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
                disable_pbar):
        samples = executor(guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        # As KSAMPLER.sample starts a sampler at sigmas[k] from this latent: x_k, the state after step k-1.
        x = guider.inner_model.model_sampling.noise_scaling(sigmas[-1], torch.zeros_like(samples), samples)
        denoiser = comfy_samplers.KSamplerX0Inpaint(guider, sigmas)
        denoiser.latent_image, denoiser.noise = latent_image, noise
        image = _HostCopy(_x0_image(guider.model_patcher, self.vae, self.x0, self.image_source, self.superpixel_px))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="freefuse-slic") as pool, quick_gil_handoff():
            segments = pool.submit(lambda: _superpixels(image.result(), self.sigma, self.size))   # CPU, beside step k
            self.maps = _capture_maps(denoiser, self.capture, x, sigmas[-1], denoise_mask, extra_args, self.step,
                                      self.block)
            self.segments = segments.result()
        self.image = image.result()
        return samples


class _HostCopy:
    """A copy of a device tensor into host memory, started now and waited for in `result()` (pinned memory
    and an event on CUDA, so that only the thread that needs the copy waits, and only for it)."""

    def __init__(self, tensor: torch.Tensor):
        self.done = None
        if tensor.is_cuda:
            self.host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self.host.copy_(tensor, non_blocking=True)
            self.done = torch.cuda.Event()
            self.done.record()
        else:
            self.host = tensor.cpu()

    def result(self) -> torch.Tensor:
        if self.done is not None:
            self.done.synchronize()
        return self.host


def _capture_maps(denoiser, capture: _Capture, x: torch.Tensor, sigma: torch.Tensor, denoise_mask,
                  extra_args: dict, step: int, block: int) -> torch.Tensor:
    """Eq. 5-10 from double block `block` of step `step`: one evaluation of `x` at `sigma`, stopped right
    there (at cfg 1: the capture reads the conditional rows only)."""
    guider, cfg = denoiser.inner_model, denoiser.inner_model.cfg
    capture.armed, guider.cfg = True, 1.0
    try:
        denoiser(x, sigma * x.new_ones([x.shape[0]]), denoise_mask=denoise_mask,
                 model_options=extra_args["model_options"], seed=extra_args.get("seed"))
    except _Captured as captured:
        return captured.maps.float().cpu()
    finally:
        capture.armed, guider.cfg = False, cfg
    raise RuntimeError(f"{EXTRACT_NODE}: step {step} ran without reaching double block {block}; "
                       "another node may replace that block. Remove it or choose another block.")


def _superpixels(image: torch.Tensor, sigma: float, size: tuple[int, int]) -> list[np.ndarray]:
    """Eq. 11 for every batch item of the x0 image (numpy and SLIC only: safe off the main thread)."""
    return [slic_segments(item.numpy().astype(np.float64), sigma=sigma, full_size=size) for item in image]


def _x0_image(model, vae, x0: torch.Tensor, image_source: str, superpixel_px: int) -> torch.Tensor:
    """The step's predicted x0 as an RGB image `[B, h, w, 3]` in [0, 1] whose long side is at most
    `superpixel_px`, left on x0's device (the caller copies it to the host without waiting for the GPU).

    The latent is area-downsampled before decoding, so the VAE decodes only the pixels that SLIC
    will see; 'latent rgb' is Flux's linear latent-to-RGB preview instead of a VAE decode.
    """
    height, width = x0.shape[-2:]
    scale = min(1.0, superpixel_px / (8 * max(height, width)))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    small = torch.nn.functional.interpolate(x0.float(), size=size, mode="area") if scale < 1 else x0.float()
    if image_source == "vae":
        return _decode_on_device(vae, model.model.process_latent_out(small))[..., :3].float().clamp(0, 1)
    fmt = model.model.latent_format
    factors = torch.tensor(fmt.latent_rgb_factors, device=small.device)
    rgb = torch.einsum("bchw,cr->bhwr", small, factors)
    rgb = rgb + torch.tensor(fmt.latent_rgb_factors_bias or [0.0, 0.0, 0.0], device=small.device)
    rgb = ((rgb + 1) / 2).clamp(0, 1).movedim(-1, 1)
    return torch.nn.functional.interpolate(rgb, scale_factor=8, mode="bilinear").movedim(1, -1)


def _decode_on_device(vae, latent: torch.Tensor) -> torch.Tensor:
    """`vae.decode(latent)` `[B, H, W, C]`, computed as ComfyUI's `VAE.decode` does (the VAE loaded by the
    model manager, its network in the VAE's dtype, the output in ComfyUI's intermediate dtype, then
    `process_output`) but left on the VAE's device: `VAE.decode` copies its output to the CPU, which waits
    for everything the GPU has queued. The latent is a small copy, far below what would need tiling."""
    with comfy_model_management.cuda_device_context(vae.device):
        comfy_model_management.load_models_gpu([vae.patcher],
                                               memory_required=vae.memory_used_decode(latent.shape, vae.vae_dtype),
                                               force_full_load=vae.disable_offload)
        out = vae.first_stage_model.decode(latent.to(device=vae.device, dtype=vae.vae_dtype))
        return vae.process_output(out.to(dtype=vae.vae_output_dtype())).movedim(1, -1)


def require_image_vae(vae, model) -> None:
    """The VAE that decodes x0 must hold a network and take this model's latents: 2-D, with its channel count."""
    if vae.first_stage_model is None:
        raise ValueError(f"{EXTRACT_NODE}: input 'vae' holds no VAE weights (a checkpoint without a VAE, say). "
                         "Connect the FLUX VAE (Load VAE: ae.safetensors), or set x0_image to 'latent rgb'.")
    channels = model.model.latent_format.latent_channels
    if vae.latent_dim != 2 or vae.latent_channels != channels:
        raise ValueError(f"{EXTRACT_NODE}: input 'vae' decodes {vae.latent_channels}-channel latents of "
                         f"{vae.latent_dim} dimensions, but this model's latents are 2-D with {channels} channels. "
                         "Connect the FLUX VAE (ae.safetensors), or set x0_image to 'latent rgb'.")


def _grid(latent: dict) -> tuple[int, int]:
    """Flux's image token grid: 2x2 latent patches, the latent padded up to even sizes."""
    height, width = latent["samples"].shape[-2:]
    return (height + 1) // 2, (width + 1) // 2


def _pixels(latent: dict) -> tuple[int, int]:
    """The full image size of a latent: 8 px a latent cell."""
    return tuple(8 * d for d in latent["samples"].shape[-2:])


def _vote(subjects, token_sets, maps, image, segments, step, block, setup, latent_at_step) -> FreeFuseMasks:
    """Eq. 12-13 on the working image SLIC segmented; the token masks counted from its ownership."""
    grid, size = _grid(setup.latent), _pixels(setup.latent)
    owners = torch.stack([vote_owner(maps[b], segments[b], grid, size=size) for b in range(image.shape[0])])
    token_masks = torch.stack([owner_to_token_masks(owner, len(subjects), grid, size=size) for owner in owners])
    empty = tuple(s.name for i, s in enumerate(subjects) if not bool(token_masks[..., i].any()))
    for name in empty:
        log.warning("%s: subject '%s' won no superpixel at step %d; its LoRA will act nowhere. "
                    "Try another 'mask_step' or 'mask_block', or a clearer activation word.",
                    EXTRACT_NODE, name, step)
    return FreeFuseMasks(subjects=tuple(s.name for s in subjects), token_masks=token_masks, owner=owners,
                         image=image, grid=grid, step=step, block=block, setup=setup,
                         latent_at_step=latent_at_step, empty_subjects=empty,
                         subject_tokens=tuple(tuple(t) for t in token_sets))
