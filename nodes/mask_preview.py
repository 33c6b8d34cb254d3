from ..freefuse_comfy.host import io, ui
from ..freefuse_comfy.preview import legend, mask_batch, overlay
from .types import FreeFuseMasksType


class FreeFuseMaskPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FreeFuseMaskPreview",
            display_name="FreeFuse Mask Preview",
            category="sampling/freefuse",
            description="Shows the voted masks as coloured regions over the step-k image, with a legend "
                        "of subject names, and outputs them as ordinary masks.",
            inputs=[
                FreeFuseMasksType.Input("freefuse_masks", tooltip="From FreeFuse Mask Extract."),
                io.Float.Input("opacity", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="How strongly the subject colours cover the image."),
            ],
            outputs=[
                io.Image.Output(display_name="preview", tooltip="The coloured masks over the step-k image."),
                io.Mask.Output(display_name="masks",
                               tooltip="One mask per subject (per image of the batch), in LoRA order: "
                                       "use them for inpainting or face detailers."),
                io.String.Output(display_name="subjects", tooltip="Subject names in mask order, one per line."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, *, freefuse_masks, opacity: float) -> io.NodeOutput:
        image = overlay(freefuse_masks, opacity)
        preview = ui.PreviewImage(image, cls=cls)
        return io.NodeOutput(image, mask_batch(freefuse_masks), "\n".join(freefuse_masks.subjects),
                             ui={**preview.as_dict(), "freefuse_legend": legend(freefuse_masks)})
