"""Random LoRA files in the key formats users have, written from ComfyUI's own key map."""
import comfy.lora
import torch
from safetensors.torch import save_file

FORMATS = {
    "kohya": ("lora_unet_", ".lora_down.weight", ".lora_up.weight"),
    "diffusers": ("transformer.", ".lora_A.weight", ".lora_B.weight"),
    "prefixed": ("diffusion_model.", ".lora_down.weight", ".lora_up.weight"),
}


def lora_state_dict(model, fmt: str, rank: int = 4, seed: int = 0, scale: float = 0.05,
                    alpha: float | None = None, only=None) -> dict[str, torch.Tensor]:
    prefix, down_suffix, up_suffix = FORMATS[fmt]
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    weights = model.model.state_dict()
    generator = torch.Generator().manual_seed(seed)
    sd = {}
    for lora_key, target in sorted(key_map.items()):
        if not lora_key.startswith(prefix) or (fmt == "prefixed" and lora_key.endswith(".weight")):
            continue
        weight_key, offset = (target, None) if isinstance(target, str) else (target[0], target[1])
        out_len = offset[2] if offset else None
        weight = weights.get(weight_key)
        if weight is None or weight.ndim != 2 or (only is not None and not only(weight_key)):
            continue
        out_len = out_len or weight.shape[0]
        sd[lora_key + down_suffix] = torch.randn(rank, weight.shape[1], generator=generator) * scale
        sd[lora_key + up_suffix] = torch.randn(out_len, rank, generator=generator) * scale
        if alpha is not None:
            sd[lora_key + ".alpha"] = torch.tensor(float(alpha))
    assert sd, f"no {fmt} keys for this model"
    return sd


def write_lora(folder, name: str, model, fmt: str = "kohya", **kwargs) -> str:
    save_file(lora_state_dict(model, fmt, **kwargs), str(folder / name))
    return name
