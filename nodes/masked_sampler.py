from ..freefuse_comfy.host import io
from ..freefuse_comfy.masked import MODES, MODULATION, sample_masked
from .types import FreeFuseMasksType


class FreeFuseMaskedSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FreeFuseMaskedSampler",
            display_name="FreeFuse Masked LoRA Sampler",
            category="sampling/freefuse",
            description="Samples with every LoRA's output multiplied by its subject's mask (FreeFuse "
                        "stage 2), with the seed, steps and schedule of the Mask Extract node.",
            inputs=[
                FreeFuseMasksType.Input("freefuse_masks", tooltip="From FreeFuse Mask Extract."),
                io.Combo.Input("mode", options=list(MODES), default="restart",
                               tooltip="'restart': sample again from step 0 with the masks from the start "
                                       "(default; kept both characters right far more often on a trained "
                                       "test model). 'continue': go on from step k (fewer steps, faster)."),
                io.Combo.Input("modulation", options=list(MODULATION), default="keep", advanced=True, optional=True,
                               tooltip="Subject LoRAs' terms on the layers that act on the pooled vector "
                                       "(time, guidance and text embedders, and the modulation that shifts and "
                                       "scales every token at once): 'keep' on wherever the subject has a "
                                       "region (paper), 'drop' off while sampling with masks."),
                io.Boolean.Input("token_isolation", default=False, advanced=True, optional=True,
                                 tooltip="Turn each character LoRA off on the other characters' activation "
                                         "words in the prompt, so it cannot restyle them through their own "
                                         "words (text tokens are otherwise not masked)."),
            ],
            outputs=[io.Latent.Output(tooltip="The denoised latent; decode it with VAE Decode.")],
        )

    @classmethod
    def execute(cls, *, freefuse_masks, mode: str, modulation: str = "keep",
                token_isolation: bool = False) -> io.NodeOutput:
        return io.NodeOutput(sample_masked(freefuse_masks, mode, modulation, token_isolation))
