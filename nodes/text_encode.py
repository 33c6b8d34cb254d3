from ..freefuse_comfy.host import io
from ..freefuse_comfy.prompt import encode


class FreeFuseTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FreeFuseTextEncode",
            display_name="FreeFuse Text Encode",
            category="conditioning/freefuse",
            description="CLIP Text Encode that also carries the prompt's T5 tokens, so FreeFuse finds "
                        "each LoRA's activation words without you typing the prompt twice.",
            inputs=[
                io.Clip.Input("clip", tooltip="Flux's text encoders (DualCLIPLoader, type flux)."),
                io.String.Input("text", multiline=True, dynamic_prompts=True,
                                tooltip="The prompt. Name every subject with its LoRA's activation word(s)."),
            ],
            outputs=[io.Conditioning.Output(tooltip="Conditioning, usable anywhere CLIP Text Encode's is.")],
        )

    @classmethod
    def execute(cls, *, clip, text: str) -> io.NodeOutput:
        return io.NodeOutput(encode(clip, text))
