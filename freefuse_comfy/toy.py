"""The toy world's model, text encoder and VAE, built through ComfyUI's own classes.

- Diffusion model: Flux with 3 double + 3 single blocks, hidden 192 (6 heads of 32), context 64,
  pooled 32, no guidance embedding; a ModelPatcher like the one `UNETLoader` gives.
- Text encoder: Flux's CLIP-L + T5 pair with the real tokenizers. T5 is two layers of width 64
  (4 heads): a learned embedding per T5 token id (only the world's tokens are stored) and two
  attention layers whose relative position bias tells the model which name stands next to which
  layout word (one layer of 2 heads swapped left and right in half the two-character samples).
  CLIP-L is all zeros, so the pooled vector is 0.
- VAE: a TAESD whose decoder is set by hand to `rgb = A z + 1/2` per latent pixel, upsampled 8x
  (`z` the model-space latent): every identity vector becomes a colour. It only decodes.
The world itself (scenes, captions, metrics) is `toyworld/world.py`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from .host import (
    comfy_model_management,
    comfy_sd,
    folder_paths,
    model_patcher,
    supported_models,
    supported_models_base,
    taesd,
)

FLUX = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 32, "context_in_dim": 64,
        "hidden_size": 192, "mlp_ratio": 4.0, "num_heads": 6, "depth": 3, "depth_single_blocks": 3,
        "axes_dim": [4, 14, 14], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": False,
        "txt_ids_dims": []}
TEXT = {"dtype": torch.float32,
        "t5xxl_model_config": {"d_model": 64, "d_ff": 256, "d_kv": 16, "num_heads": 4, "num_layers": 2},
        "clip_l_model_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                                "num_hidden_layers": 1, "projection_dim": 32}}
FILES = {"model": "toy_flux.safetensors", "text": "toy_text.safetensors"}
CHECKPOINTS = Path(__file__).resolve().parents[1] / "toyworld" / "checkpoints"
LORAS = CHECKPOINTS / "loras"
RGB_SEED, OFFSET = 7, 4.0


def flux_model(state_dict: dict[str, torch.Tensor] | None = None):
    """The toy Flux as a ModelPatcher (weights from `state_dict`, else left for the caller to set)."""
    config = supported_models.Flux(dict(FLUX))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, device="cpu")
    if state_dict is not None:
        missing, unexpected = model.diffusion_model.load_state_dict(
            {k: v.float() for k, v in state_dict.items()}, strict=False)
        if missing or unexpected:
            raise ValueError(f"toy model checkpoint does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model_patcher.ModelPatcher(model, load_device=comfy_model_management.get_torch_device(),
                                      offload_device=comfy_model_management.unet_offload_device())


def text_encoder(state_dict: dict[str, torch.Tensor] | None = None):
    """The toy text encoder as a ComfyUI CLIP; `state_dict` holds the embedding `rows` of the T5 `ids`
    the world uses and every other T5 weight under `t5.`."""
    target = supported_models.Flux(dict(FLUX)).clip_target()
    clip = comfy_sd.CLIP(target=supported_models_base.ClipTarget(target.tokenizer, target.clip), model_options=TEXT)
    with torch.no_grad():
        for p in clip.cond_stage_model.parameters():
            p.zero_()
        t5 = clip.cond_stage_model.t5xxl.transformer
        t5.encoder.final_layer_norm.weight.fill_(1.0)
        if state_dict is not None:
            t5.shared.weight[state_dict["ids"].long()] = state_dict["rows"].to(t5.shared.weight.dtype)
            layers = {k[3:]: v.float() for k, v in state_dict.items() if k.startswith("t5.")}
            missing, unexpected = t5.load_state_dict(layers, strict=False)
            if unexpected or set(missing) != {"shared.weight"}:
                raise ValueError(f"toy text encoder checkpoint does not fit: missing {missing}, "
                                 f"unexpected {unexpected}")
    return clip


def text_model(clip):
    """The toy CLIP's T5 (`text_model(clip)(ids, None)[0]` is the context ComfyUI encodes)."""
    return clip.cond_stage_model.t5xxl.transformer


def rgb_matrix() -> torch.Tensor:
    return torch.randn(3, 16, generator=torch.Generator().manual_seed(RGB_SEED)) * 0.06


def vae():
    """The hand-set TAESD: `rgb = A z + 1/2`, nearest-upsampled 8x (decoding only)."""
    model = taesd.TAESD(latent_channels=16)
    layers = model.taesd_decoder
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        layers[1].weight[:3, :, 1, 1] = rgb_matrix()
        layers[1].bias[:3] = 0.5 + OFFSET            # stays positive through the ReLUs
        for index in (7, 12, 17):                     # the 3x3 convolutions after each upsampling: identity
            layers[index].weight[:3, :3, 1, 1] = torch.eye(3)
        layers[19].weight[:3, :3, 1, 1] = torch.eye(3)
        layers[19].bias[:3] = -OFFSET
    sd = model.state_dict()
    latent = supported_models.Flux(dict(FLUX)).latent_format
    sd["vae_scale"] = torch.tensor(latent.scale_factor)
    sd["vae_shift"] = torch.tensor(latent.shift_factor)
    return comfy_sd.VAE(sd=sd)


def register_loras() -> None:
    """Lists the shipped toy LoRAs among ComfyUI's LoRAs (once; a folder ComfyUI already has is kept)."""
    if str(LORAS) not in folder_paths.get_folder_paths("loras"):
        folder_paths.add_model_folder_path("loras", str(LORAS))


def load(folder: Path = CHECKPOINTS):
    """(MODEL, CLIP, VAE) of the trained toy world in `folder`."""
    paths = {k: Path(folder) / name for k, name in FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"FreeFuse Toy World Loader: checkpoints missing: {', '.join(missing)}. "
                                "Reinstall the pack, or train them with 'python3 toyworld/train.py --out "
                                "toyworld/checkpoints'.")
    model = flux_model(load_file(str(paths["model"])))
    return model, text_encoder(load_file(str(paths["text"]))), vae()
