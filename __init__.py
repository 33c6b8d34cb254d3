"""FreeFuse for ComfyUI: several character LoRAs on Flux, each confined to its own subject."""
from .freefuse_comfy.host import ComfyExtension, io
from .nodes.lora_loader import FreeFuseLoraLoader
from .nodes.mask_extract import FreeFuseMaskExtract
from .nodes.mask_preview import FreeFuseMaskPreview
from .nodes.masked_sampler import FreeFuseMaskedSampler
from .nodes.text_encode import FreeFuseTextEncode

WEB_DIRECTORY = "./web"


class FreeFuseExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [FreeFuseLoraLoader, FreeFuseTextEncode, FreeFuseMaskExtract, FreeFuseMaskedSampler,
                FreeFuseMaskPreview]


async def comfy_entrypoint() -> FreeFuseExtension:
    return FreeFuseExtension()
