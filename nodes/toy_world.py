from ..freefuse_comfy.host import io
from ..freefuse_comfy.toy import load


class FreeFuseToyWorldLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FreeFuseToyWorldLoader",
            display_name="FreeFuse Toy World Loader",
            category="loaders/freefuse",
            description="A small Flux-architecture model trained on a synthetic world of striped-ellipse "
                        "characters, with its text encoder and VAE, shipped with this pack: try FreeFuse "
                        "in seconds on a CPU. Its character LoRAs (toy_nexwen, toy_paxzor, toy_braalu) are "
                        "in the LoRA list; name them in a prompt such as 'a photo of nexwen on the left "
                        "and paxzor on the right'. 256 x 256 images.",
            inputs=[],
            outputs=[io.Model.Output(tooltip="The toy Flux model (3 double + 3 single blocks)."),
                     io.Clip.Output(tooltip="Its text encoder (real T5 tokenizer)."),
                     io.Vae.Output(tooltip="Its VAE (decodes only).")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(*load())
