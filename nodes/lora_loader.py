from ..freefuse_comfy.host import folder_paths, io
from ..freefuse_comfy.injection import attach_lora
from ..freefuse_comfy.loras import load_freefuse_lora, parse_words


class FreeFuseLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FreeFuseLoraLoader",
            display_name="FreeFuse LoRA Loader",
            category="loaders/freefuse",
            description="Attach a LoRA unmerged so FreeFuse can confine it to its subject. "
                        "Chain one loader per LoRA, like the stock LoRA loader.",
            inputs=[
                io.Model.Input("model", tooltip="A Flux model, or the output of another FreeFuse LoRA Loader."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="A .safetensors LoRA from models/loras (kohya, diffusers/ai-toolkit, "
                                       "OneTrainer, LyCORIS or XLabs keys)."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="LoRA strength, as in the stock LoRA loader."),
                io.String.Input("activation_words", default="",
                                tooltip="The word(s) in your prompt that name this LoRA's subject, "
                                        "comma-separated (e.g. 'Alice' or 'Mr Bean, he'). Empty: a global "
                                        "LoRA (style), never masked."),
            ],
            outputs=[io.Model.Output(tooltip="The model with this LoRA attached. Without FreeFuse masks it "
                                             "samples exactly like the stock LoRA loader.")],
        )

    @classmethod
    def execute(cls, *, model, lora_name: str, strength: float, activation_words: str) -> io.NodeOutput:
        lora = load_freefuse_lora(model, lora_name, strength, parse_words(activation_words))
        return io.NodeOutput(attach_lora(model, lora))
