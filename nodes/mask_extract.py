from ..freefuse_comfy.host import comfy_samplers, io
from ..freefuse_comfy.sampling import SUPERPIXEL_PX, SamplingSetup, extract
from .types import FreeFuseMasksType


class FreeFuseMaskExtract(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FreeFuseMaskExtract",
            display_name="FreeFuse Mask Extract (step/block)",
            category="sampling/freefuse",
            description="Runs the first steps of your sampling, reads each subject's attention in one "
                        "double block at one step, and votes one mask per LoRA subject (FreeFuse stage 1).",
            inputs=[
                io.Model.Input("model", tooltip="The model from FreeFuse LoRA Loader(s)."),
                io.Conditioning.Input("positive", tooltip="From FreeFuse Text Encode (Flux Guidance etc. in "
                                                          "between is fine)."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Negative conditioning; needed only with cfg above 1 "
                                              "(FLUX.1-dev samples at cfg 1)."),
                io.Latent.Input("latent_image", tooltip="The latent to denoise (Empty Latent Image)."),
                io.Vae.Input("vae", tooltip="Decodes the step's predicted image for the superpixels."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed; the masked sampler reuses it."),
                io.Int.Input("steps", default=28, min=1, max=10000, tooltip="Total sampling steps."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="CFG scale; 1 for FLUX.1-dev (guidance comes from Flux Guidance)."),
                io.Combo.Input("sampler_name", options=comfy_samplers.KSampler.SAMPLERS, default="euler",
                               tooltip="Sampler, as in KSampler."),
                io.Combo.Input("scheduler", options=comfy_samplers.KSampler.SCHEDULERS, default="simple",
                               tooltip="Scheduler, as in KSampler."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Denoise, as in KSampler."),
                io.Int.Input("mask_step", default=6, min=0, max=10000,
                             tooltip="Step k whose attention gives the masks (paper: 6 of 28). Must be "
                                     "at least 1 and less than steps."),
                io.Int.Input("mask_block", default=16, min=0, max=100,
                             tooltip="Double block b read at step k (paper: the 17th, index 16 of 0..18)."),
                io.Combo.Input("loras_before_mask", options=["joint", "off"], default="joint", advanced=True,
                               tooltip="LoRAs during steps 0..k-1: 'joint' all on unmasked (paper), "
                                       "'off' base model only."),
                io.Float.Input("slic_sigma", default=1.0, min=0.0, max=10.0, step=0.1, advanced=True,
                               tooltip="Gaussian smoothing of the image before SLIC superpixels "
                                       "(not given by the paper; ours)."),
                io.Combo.Input("x0_image", options=["vae", "latent rgb"], default="vae", advanced=True,
                               tooltip="Image for the superpixels: 'vae' decodes the predicted x0 (paper); "
                                       "'latent rgb' is a cheap linear preview of the latent."),
                io.Int.Input("superpixel_px", default=SUPERPIXEL_PX, min=64, max=8192, step=64, advanced=True,
                             tooltip="Long side, in pixels, of the x0 image that SLIC segments (ours: the "
                                     "paper segments the full image). The superpixel count stays "
                                     "sqrt(H*W) of the full image; masks come back at full size."),
            ],
            outputs=[FreeFuseMasksType.Output(display_name="freefuse_masks",
                                              tooltip="Masks, subject names and the sampling setup, "
                                                      "for the Masked LoRA Sampler and Mask Preview.")],
        )

    @classmethod
    def execute(cls, *, model, positive, latent_image, vae, seed: int, steps: int, cfg: float,
                sampler_name: str, scheduler: str, denoise: float, mask_step: int, mask_block: int,
                loras_before_mask: str, slic_sigma: float, x0_image: str, superpixel_px: int,
                negative=None) -> io.NodeOutput:
        if negative is None and cfg != 1.0:
            raise ValueError(f"FreeFuse Mask Extract (step/block): input 'negative' is not connected but cfg is "
                             f"{cfg}. Connect a negative conditioning, or set cfg to 1.")
        negative = positive if negative is None else negative
        setup = SamplingSetup(model=model, positive=positive, negative=negative, latent=latent_image,
                              seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                              scheduler=scheduler, denoise=denoise)
        masks = extract(setup, vae, mask_step, mask_block, loras_before_mask == "joint", slic_sigma, x0_image,
                        superpixel_px)
        return io.NodeOutput(masks)
