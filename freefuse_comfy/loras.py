"""LoRA files as unmerged, maskable terms on the layers of a ComfyUI Flux model.

A LoRA acts on a linear layer `y = W x` as `y = W x + s * B A x` with `s = strength * alpha / r`
(Eq. 1 with `F = 1`). ComfyUI's own key maps (`model_lora_keys_unet`, `convert_lora`,
`load_lora`) turn any supported file (kohya, diffusers/ai-toolkit with q/k/v split into slices of
the fused `qkv` and `linear1`, `diffusion_model.`, OneTrainer, LyCORIS) into adapters per weight
key. Plain LoRA adapters stay low-rank (`A`, `s B`); LoHa, LoKr and LoCon-mid adapters are
materialised once into a dense `dW` through the adapter itself. DoRA is not additive and is refused.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from safetensors import SafetensorError

from ..freefuse_core import DenseTerm, LowRankTerm
from .host import comfy_lora, comfy_utils, flux_model, folder_paths, lora_convert, weight_adapter

NODE = "FreeFuse LoRA Loader"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerPart:
    """One adapter's additive term on one (slice of a) linear layer, scale folded in."""

    module: str                    # path under the diffusion model, e.g. "double_blocks.3.img_attn.qkv"
    down: torch.Tensor | None      # A [r, in] (low-rank), or None for a dense term
    up: torch.Tensor               # s*B [out_slice, r], or s*dW [out_slice, in] for a dense term
    out_start: int

    def term(self, subject: int) -> LowRankTerm | DenseTerm:
        if self.down is None:
            return DenseTerm(subject=subject, delta=self.up, out_start=self.out_start)
        return LowRankTerm(subject=subject, down=self.down, up=self.up, out_start=self.out_start)


@dataclass(frozen=True)
class FreeFuseLora:
    """A LoRA attached unmerged to a model; `words` empty means global (never masked)."""

    name: str
    words: tuple[str, ...]
    strength: float
    parts: tuple[LayerPart, ...]

    @property
    def is_subject(self) -> bool:
        return bool(self.words)


def require_flux(model, node: str, name: str = "model") -> flux_model.Flux:
    """The Flux diffusion model inside a ModelPatcher, or an error that says what is supported."""
    diffusion_model = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(diffusion_model, flux_model.Flux):
        found = type(diffusion_model).__name__ if diffusion_model is not None else type(model).__name__
        raise ValueError(
            f"{node}: input '{name}' is a {found} model; FreeFuse supports Flux-architecture models "
            "only (FLUX.1-dev, FLUX.1-schnell, Krea-1-dev and their fine-tunes). Load one with "
            "'Load Diffusion Model' (UNETLoader) or a Flux checkpoint.")
    return diffusion_model


def parse_words(text: str) -> tuple[str, ...]:
    """Activation words as typed: comma-separated, surrounding whitespace ignored."""
    return tuple(w.strip() for w in text.split(",") if w.strip())


def read_lora_file(lora_name: str) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` LoRA from the `loras` folder; never unpickles."""
    path = folder_paths.get_full_path("loras", lora_name)
    if path is None:
        raise ValueError(f"{NODE}: input 'lora_name' names '{lora_name}', which is not in the loras "
                         "folder. Put the file in ComfyUI/models/loras and refresh (press R).")
    if not path.lower().endswith(".safetensors"):
        raise ValueError(f"{NODE}: input 'lora_name' is '{lora_name}', not a .safetensors file. "
                         "FreeFuse never unpickles .pt/.ckpt files; convert the LoRA to safetensors.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{NODE}: input 'lora_name' is '{lora_name}', an empty file (0 bytes). "
                         "Download the LoRA again.")
    try:
        return comfy_utils.load_torch_file(path, safe_load=True)
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise ValueError(f"{NODE}: input 'lora_name' is '{lora_name}', which is not a readable "
                         f"safetensors file ({error}). Download the LoRA again.") from error


XLABS_TARGETS = {"qkv_lora1": "img_attn.qkv", "qkv_lora2": "txt_attn.qkv",
                 "proj_lora1": "img_attn.proj", "proj_lora2": "txt_attn.proj"}


def convert_xlabs(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """XLabs files (`double_blocks.N.processor.qkv_lora1.down.weight`) in kohya-style names.

    XLabs applies `up(down(x))` without an alpha, which is ComfyUI's scale 1 with no alpha key.
    """
    if not any(".processor." in k for k in sd):
        return sd
    out = {}
    for key, value in sd.items():
        block, _, rest = key.partition(".processor.")
        lora, _, tail = rest.partition(".")
        if lora not in XLABS_TARGETS or tail not in ("down.weight", "up.weight"):
            out[key] = value
            continue
        kind = "lora_down" if tail.startswith("down") else "lora_up"
        out[f"diffusion_model.{block}.{XLABS_TARGETS[lora]}.{kind}.weight"] = value
    return out


def _parts_of(key, adapter, strength: float, model_sd) -> LayerPart:
    weight_key, offset, function = (key, None, None) if isinstance(key, str) else (key + (None,))[:3]
    if not weight_key.startswith("diffusion_model.") or not weight_key.endswith(".weight"):
        raise ValueError(f"{NODE}: the LoRA patches '{weight_key}', which is not a linear layer "
                         "weight; FreeFuse can mask only linear layers of the diffusion model.")
    module = weight_key[len("diffusion_model."):-len(".weight")]
    weight = model_sd[weight_key]
    out_start, out_len = 0, weight.shape[0]
    if offset is not None:
        dim, out_start, out_len = offset
        if dim != 0:
            raise ValueError(f"{NODE}: the LoRA patches a slice of '{weight_key}' along its input "
                             "dimension, which FreeFuse cannot mask.")
    if not isinstance(adapter, weight_adapter.WeightAdapterBase):
        kind = adapter[0] if isinstance(adapter, tuple) else type(adapter).__name__
        if kind != "diff":
            raise ValueError(f"{NODE}: the LoRA holds a '{kind}' patch for '{weight_key}', which is "
                             "not an additive term; FreeFuse supports LoRA, LoHa, LoKr and diff files.")
        delta = adapter[1][0].float() * strength
        return LayerPart(module, None, function(delta) if function else delta, out_start)
    if isinstance(adapter, weight_adapter.LoRAAdapter):
        up, down, alpha, mid, dora_scale, reshape = adapter.weights
        if dora_scale is not None:
            raise ValueError(f"{NODE}: the LoRA is a DoRA (it has dora_scale for '{weight_key}'); "
                             "DoRA rescales the whole weight and cannot be confined to a mask.")
        if mid is None and reshape is None and function is None:
            scale = strength * (alpha / down.shape[0] if alpha is not None else 1.0)
            return LayerPart(module, down.float().flatten(1), up.float().flatten(1) * scale, out_start)
    zeros = torch.zeros((out_len, weight.shape[1]), dtype=torch.float32)
    delta = adapter.calculate_weight(zeros, weight_key, strength, 1.0, None, function or (lambda w: w))
    return LayerPart(module, None, delta, out_start)


def _check_fits(part: LayerPart, weight: torch.Tensor, lora_name: str) -> None:
    """A term whose shape does not fit its layer (a LoRA made for another model size) is refused."""
    width = (part.down if part.down is not None else part.up).shape[1]
    if width != weight.shape[1] or part.out_start + part.up.shape[0] > weight.shape[0]:
        raise ValueError(f"{NODE}: '{lora_name}' does not fit this model: its term on '{part.module}' takes "
                         f"{width} inputs to {part.up.shape[0]} outputs, the layer is {weight.shape[1]} to "
                         f"{weight.shape[0]}. Use a LoRA trained for this model (a FLUX.1 LoRA for FLUX.1, a toy "
                         "LoRA for the toy world).")


def load_freefuse_lora(model, lora_name: str, strength: float, words: tuple[str, ...]) -> FreeFuseLora:
    """Read a LoRA file and map it onto `model` through ComfyUI's key maps."""
    diffusion_model = require_flux(model, NODE)
    sd = convert_xlabs(read_lora_file(lora_name))
    key_map = comfy_lora.model_lora_keys_unet(model.model, {})
    patches = comfy_lora.load_lora(lora_convert.convert_lora(sd), key_map, log_missing=False)
    model_sd = {f"diffusion_model.{k}": v for k, v in diffusion_model.state_dict().items()}
    patches = {k: v for k, v in patches.items() if (k if isinstance(k, str) else k[0]) in model_sd}
    if not patches:
        raise ValueError(f"{NODE}: no key of '{lora_name}' ({len(sd)} tensors) matches a layer of this "
                         "Flux model. Is it a LoRA for another model (SDXL, SD3)? Use a FLUX.1 LoRA.")
    parts = tuple(_parts_of(k, v, strength, model_sd) for k, v in patches.items())
    for part in parts:
        _check_fits(part, model_sd[f"diffusion_model.{part.module}.weight"], lora_name)
    log.info("%s: '%s' matched %d Flux layers (%d tensors in the file)", NODE, lora_name, len(parts), len(sd))
    return FreeFuseLora(name=os.path.splitext(os.path.basename(lora_name))[0], words=words,
                        strength=strength, parts=parts)
