"""FreeFuse for ComfyUI: several character LoRAs on Flux, each confined to its own subject."""
from .freefuse_comfy.host import ComfyExtension, io
from .freefuse_comfy.toy import register_loras
from .nodes.lora_loader import FreeFuseLoraLoader
from .nodes.mask_extract import FreeFuseMaskExtract
from .nodes.mask_preview import FreeFuseMaskPreview
from .nodes.masked_sampler import FreeFuseMaskedSampler
from .nodes.text_encode import FreeFuseTextEncode
from .nodes.toy_world import FreeFuseToyWorldLoader

WEB_DIRECTORY = "./web"
register_loras()   # the toy world's character LoRAs, listed for FreeFuse LoRA Loader


class FreeFuseExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [FreeFuseLoraLoader, FreeFuseTextEncode, FreeFuseMaskExtract, FreeFuseMaskedSampler,
                FreeFuseMaskPreview, FreeFuseToyWorldLoader]


async def comfy_entrypoint() -> FreeFuseExtension:
    return FreeFuseExtension()
