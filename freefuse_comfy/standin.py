"""Tiny stand-ins for FLUX.1 files, built through ComfyUI's own classes, for smoke runs and tests.

- Diffusion model: a Flux state dict of full architecture but small width and depth; ComfyUI's
  model detection reads width, depth and dims from the shapes, so `UNETLoader` loads the saved file.
- Text encoders: Flux's CLIP-L + T5 pair with small configs (the real T5 tokenizer), built as a
  `comfy.sd.CLIP`; the stock `DualCLIPLoader` cannot load it because ComfyUI fixes those configs.
- VAE: a TAESD with 16 latent channels, which the stock `VAELoader` loads from a single file.
All weights are random from a seed: the stand-ins prove the pipeline, not the picture.
"""
from __future__ import annotations

import torch

from .host import comfy_lora, comfy_sd, supported_models, supported_models_base, taesd

AXES_DIM = (16, 56, 56)   # fixed by ComfyUI's Flux detection: head dim 128


def _fill(module: torch.nn.Module, seed: int, scale: float = 0.05) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, tensor in module.state_dict().items():
        owner, _, leaf = name.rpartition(".")
        if "norm" in owner.rsplit(".", 1)[-1]:
            value = torch.ones(tensor.shape) if leaf in ("weight", "scale") else torch.zeros(tensor.shape)
        else:
            value = torch.randn(tensor.shape, generator=generator) * scale
        out[name] = value.to(torch.float32)
    return out


def flux_unet_config(hidden: int = 256, depth: int = 2, depth_single: int = 2, context: int = 64,
                     vec: int = 32) -> dict:
    return {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": vec,
            "context_in_dim": context, "hidden_size": hidden, "mlp_ratio": 4.0,
            "num_heads": hidden // sum(AXES_DIM), "depth": depth, "depth_single_blocks": depth_single,
            "axes_dim": list(AXES_DIM), "theta": 10000, "patch_size": 2, "qkv_bias": True,
            "guidance_embed": True, "txt_ids_dims": []}


def tiny_flux_state_dict(seed: int = 0, **config) -> dict[str, torch.Tensor]:
    """A random Flux state dict that ComfyUI's `UNETLoader` detects as Flux."""
    model_config = supported_models.Flux(flux_unet_config(**config))
    model = model_config.get_model({}, device="cpu")
    return _fill(model.diffusion_model, seed)


def tiny_flux(seed: int = 0, **config):
    """The ModelPatcher that `UNETLoader` would give for `tiny_flux_state_dict`."""
    return comfy_sd.load_diffusion_model_state_dict(tiny_flux_state_dict(seed, **config))


def tiny_clip(seed: int = 0, context: int = 64, vec: int = 32):
    """Flux's CLIP-L + T5 text encoders at tiny width, with the real tokenizers."""
    flux = supported_models.Flux(flux_unet_config(context=context, vec=vec))
    target = flux.clip_target()
    model_options = {
        "t5xxl_model_config": {"d_model": context, "d_ff": 2 * context, "d_kv": 16, "num_heads": 2,
                               "num_layers": 1},
        "clip_l_model_config": {"hidden_size": vec, "intermediate_size": 2 * vec,
                                "num_attention_heads": 2, "num_hidden_layers": 2, "projection_dim": vec},
    }
    clip = comfy_sd.CLIP(target=supported_models_base.ClipTarget(target.tokenizer, target.clip),
                         model_options=model_options)
    clip.cond_stage_model.load_state_dict(_fill(clip.cond_stage_model, seed, scale=0.5))
    return clip


def tiny_vae_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random TAESD (16 latent channels) that the stock `VAELoader` loads from one file."""
    sd = _fill(taesd.TAESD(latent_channels=16), seed, scale=0.1)
    sd["vae_scale"] = torch.tensor(0.3611)
    sd["vae_shift"] = torch.tensor(0.1159)
    return sd


def random_lora_state_dict(model, rank: int = 4, seed: int = 0, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """A random kohya-format LoRA on every 2-D weight that ComfyUI's key map reaches in `model`."""
    generator = torch.Generator().manual_seed(seed)
    weights = model.model.state_dict()
    sd = {}
    for key, target in sorted(comfy_lora.model_lora_keys_unet(model.model, {}).items()):
        weight = weights.get(target) if isinstance(target, str) and key.startswith("lora_unet_") else None
        if weight is not None and weight.ndim == 2:
            sd[f"{key}.lora_down.weight"] = torch.randn(rank, weight.shape[1], generator=generator) * scale
            sd[f"{key}.lora_up.weight"] = torch.randn(weight.shape[0], rank, generator=generator) * scale
    return sd
