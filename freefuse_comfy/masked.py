"""Stage 2: sampling with each LoRA confined to its subject's mask (Eq. 1).

`F` per LoRA column: the subject's token mask for a subject LoRA, 1 for a global LoRA. Per model
evaluation the diffusion-model wrapper expands `F` to the batch of that evaluation (cond and
uncond chunks each hold the whole latent batch) and to the layer streams: image tokens use `F`;
text tokens and pooled layers (no spatial axis) use `P_l = max_n F_l(n)`, 1 when the subject owns
any region of that image and 0 when it owns none; single-block tokens `[P; F]`. So text rows are
not masked, and a subject without a region has no effect at all (all masks 0 = no LoRA).
Pooled layers (embedders, modulation) act on every token of the image at once (shift, scale,
gate); with `modulation="drop"` the subject LoRAs' terms there are 0 while sampling with masks
(global LoRAs keep theirs). With `token_isolation` a subject LoRA's factor is also 0 on the text
rows of the other subjects' activation words (`I_m`, m != l), so it cannot restyle another
character through that character's own words.
"""
from __future__ import annotations

import torch

from .host import WrappersMP, latent_preview
from .injection import CallMasks, CallScope, loras_of
from .sampling import SAMPLER_NODE, WRAPPER_KEY, FreeFuseMasks, latent_image_of, noise_of, run_sampler, sigmas_of

MODES = ("restart", "continue")
MODULATION = ("keep", "drop")


def lora_columns(masks: FreeFuseMasks, model) -> torch.Tensor:
    """`[B, N, n_loras]`: each LoRA's factor per image token, in the order of the model's LoRAs."""
    loras = loras_of(model)
    batch, tokens, _ = masks.token_masks.shape
    columns = []
    for lora in loras:
        if lora.is_subject:
            if lora.name not in masks.subjects:
                raise ValueError(f"{SAMPLER_NODE}: LoRA '{lora.name}' has no mask; the masks were "
                                 "extracted for another set of LoRAs. Run FreeFuse Mask Extract again.")
            columns.append(masks.token_masks[..., masks.subjects.index(lora.name)])
        else:
            columns.append(torch.ones(batch, tokens))
    return torch.stack(columns, dim=-1)


class MaskPlan:
    """Builds the CallMasks of one evaluation from the image-token factors `[B, N, n_loras]`."""

    def __init__(self, image: torch.Tensor, grid: tuple[int, int], pooled_off: tuple[int, ...] = (),
                 text_off: dict[int, tuple[int, ...]] | None = None):
        self.image = image
        self.grid = grid
        self.pooled_off = list(pooled_off)   # LoRA columns whose pooled-layer (modulation) terms are 0
        self.text_off = dict(text_off or {})  # LoRA column -> text rows where its factor is 0
        self.cache: dict[tuple, CallMasks] = {}

    def for_call(self, x: torch.Tensor, txt_len: int, chunks: int) -> CallMasks:
        grid = ((x.shape[-2] + 1) // 2, (x.shape[-1] + 1) // 2)
        if grid != self.grid:
            raise ValueError(f"{SAMPLER_NODE}: the latent has a {grid[0]}x{grid[1]} token grid but the "
                             f"masks were made for {self.grid[0]}x{self.grid[1]}. Sample at the size the "
                             "masks were extracted at.")
        key = (x.device, x.dtype, txt_len, chunks)
        if key not in self.cache:
            image = self.image.to(x.device, x.dtype).repeat(chunks, 1, 1)
            present = image.amax(dim=1, keepdim=True)
            text = present.expand(-1, txt_len, -1).clone()
            for column, rows in self.text_off.items():
                text[:, [r for r in rows if r < txt_len], column] = 0
            pooled = present.clone()
            pooled[..., self.pooled_off] = 0
            self.cache[key] = CallMasks(image=image, text=_unless_ones(text), joint=torch.cat([text, image], dim=1),
                                        pooled=_unless_ones(pooled))
        return self.cache[key]


def _unless_ones(factors: torch.Tensor) -> torch.Tensor | None:
    """None (unmasked: no multiply at all) where every factor is 1, else the factors."""
    return None if bool((factors == 1).all()) else factors


def _mask_wrapper(plan: MaskPlan):
    def wrapper(executor, x, timestep, context, *args, **kwargs):
        opts = kwargs.get("transformer_options", args[-1] if args else {})
        chunks = len(opts.get("cond_or_uncond", [0]))
        if x.shape[0] != chunks * plan.image.shape[0]:
            raise ValueError(f"{SAMPLER_NODE}: the model was called with a batch of {x.shape[0]} for "
                             f"{plan.image.shape[0]} masked images; area or batch-index conditioning is "
                             "not supported with FreeFuse.")
        with CallScope(plan.for_call(x, context.shape[1], chunks)):
            return executor(x, timestep, context, *args, **kwargs)
    return wrapper


def isolated_rows(masks: FreeFuseMasks, model) -> dict[int, tuple[int, ...]]:
    """Per subject LoRA column, the other subjects' activation-word tokens (token isolation)."""
    if len(masks.subject_tokens) != len(masks.subjects):
        raise ValueError(f"{SAMPLER_NODE}: input 'token_isolation' needs masks from FreeFuse Mask Extract, "
                         "which records each subject's tokens; these masks carry none.")
    owned = dict(zip(masks.subjects, masks.subject_tokens))
    return {column: tuple(t for name, tokens in owned.items() if name != lora.name for t in tokens)
            for column, lora in enumerate(loras_of(model)) if lora.is_subject}


def masked_model(masks: FreeFuseMasks, modulation: str = "keep", token_isolation: bool = False):
    """A clone of the extraction's model whose LoRAs act through `masks`."""
    if modulation not in MODULATION:
        raise ValueError(f"{SAMPLER_NODE}: input 'modulation' is '{modulation}'; choose one of "
                         f"{', '.join(MODULATION)}.")
    model = masks.setup.model.clone()
    off = tuple(i for i, lora in enumerate(loras_of(model)) if lora.is_subject) if modulation == "drop" else ()
    text_off = isolated_rows(masks, model) if token_isolation else None
    plan = MaskPlan(lora_columns(masks, model), masks.grid, off, text_off)
    model.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, _mask_wrapper(plan))
    return model


def continue_noise(masks: FreeFuseMasks, model) -> torch.Tensor:
    """The noise `n` with which ComfyUI's sampler, started at step k on the input latent `L`, starts from
    the extraction's state `x_k`: `noise_scaling(sigma_k, n, L) = x_k`, solved as `noise_scaling` is affine
    in `n` (flow models: `sigma n + (1 - sigma) L`). A noise mask's frozen region then blends with `L` and
    the extraction's own noise there (its `x_k` holds `sigma_k n + (1 - sigma_k) L`), as one sampler would.
    """
    setup, inner = masks.setup, model.model
    sampling = model.get_model_object("model_sampling")
    sigma = sigmas_of(setup)[masks.step]
    latent = latent_image_of(setup).float()
    latent = inner.process_latent_in(latent) if torch.count_nonzero(latent) > 0 else latent   # as ComfyUI does
    state = sampling.noise_scaling(sigma, torch.zeros_like(latent),
                                   inner.process_latent_in(masks.latent_at_step["samples"].float()))
    base = sampling.noise_scaling(sigma, torch.zeros_like(latent), latent)
    return (state - base) / (sampling.noise_scaling(sigma, torch.ones_like(latent), latent) - base)


def sample_masked(masks: FreeFuseMasks, mode: str, modulation: str = "keep", token_isolation: bool = False) -> dict:
    """Stage 2 in `mode`: 'restart' from step 0 with the same seed, or 'continue' from step k."""
    if mode not in MODES:
        raise ValueError(f"{SAMPLER_NODE}: input 'mode' is '{mode}'; choose one of {', '.join(MODES)}.")
    setup = masks.setup
    model = masked_model(masks, modulation, token_isolation)
    callback = latent_preview.prepare_callback(model, setup.steps)
    if mode == "restart":
        samples = run_sampler(model, setup, noise_of(setup), latent_image_of(setup), callback)
    else:
        samples = run_sampler(model, setup, continue_noise(masks, model), latent_image_of(setup), callback,
                              start_step=masks.step, force_full_denoise=True)
    out = {k: v for k, v in setup.latent.items() if k not in ("downscale_ratio_spacial", "downscale_ratio_temporal")}
    out["samples"] = samples
    return out
