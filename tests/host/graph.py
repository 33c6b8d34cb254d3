"""Runs the pack's nodes and ComfyUI's stock nodes as a graph would, on tiny stand-in models."""
import importlib
from dataclasses import dataclass, replace

import comfy.sd
import torch

import nodes

PROMPT = "a photo of Alice on the left and Bob on the right, in a park"


@dataclass
class World:
    pack: object
    model: object
    clip: object
    vae: object

    def run(self, node_id: str, **inputs):
        with torch.inference_mode():  # as ComfyUI's executor runs nodes
            return getattr(self.pack, node_id).execute(**inputs).result

    def loras(self, *specs, model=None):
        """FreeFuse LoRA Loaders chained: specs are (lora_name, activation_words[, strength])."""
        model = model or self.model
        for name, words, *strength in specs:
            model = self.run("FreeFuseLoraLoader", model=model, lora_name=name,
                             strength=strength[0] if strength else 1.0, activation_words=words)[0]
        return model

    def encode(self, text: str = PROMPT):
        return self.run("FreeFuseTextEncode", clip=self.clip, text=text)[0]

    def extract(self, model, positive=None, latent=None, **settings):
        positive = positive if positive is not None else self.encode()
        inputs = dict(model=model, positive=positive, negative=positive,
                      latent_image=latent or empty_latent(64, 64), vae=self.vae, seed=0, steps=4, cfg=1.0,
                      sampler_name="euler", scheduler="simple", denoise=1.0, mask_step=2, mask_block=1,
                      loras_before_mask="joint", slic_sigma=1.0, x0_image="vae", superpixel_px=256)
        inputs.update(settings)
        return self.run("FreeFuseMaskExtract", **inputs)[0]

    def masked(self, masks, mode: str = "restart") -> torch.Tensor:
        return self.run("FreeFuseMaskedSampler", freefuse_masks=masks, mode=mode)[0]["samples"]


def module(pack, name: str):
    """A submodule of the pack as ComfyUI loaded it, e.g. module(pack, "freefuse_comfy.standin")."""
    return importlib.import_module(f"{pack.__name__}.{name}")


def make_world(pack, **flux) -> World:
    standin = module(pack, "freefuse_comfy.standin")
    return World(pack, standin.tiny_flux(**flux), standin.tiny_clip(),
                 comfy.sd.VAE(sd=standin.tiny_vae_state_dict()))


def empty_latent(width: int, height: int, batch: int = 1) -> dict:
    return nodes.EmptyLatentImage().generate(width, height, batch)[0]


def stock_lora(model, name: str, strength: float = 1.0):
    return nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, strength)[0]


def stock_sample(model, positive, latent, setup) -> torch.Tensor:
    """KSampler with the settings of an extraction's setup."""
    return nodes.common_ksampler(model, setup.seed, setup.steps, setup.cfg, setup.sampler_name,
                                 setup.scheduler, positive, setup.negative, latent,
                                 denoise=setup.denoise)[0]["samples"]


def masks_set_to(masks, values: torch.Tensor):
    """The same extraction with its token masks replaced (per subject column values broadcast)."""
    return replace(masks, token_masks=values.expand_as(masks.token_masks).contiguous().float())
