"""Generates workflows/*.json (ComfyUI UI format) and their same-name thumbnails.

    python3 tools/make_workflows.py
"""
import json
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "workflows"
PROMPTS = {
    2: "a photo of Alice and Bob sitting side by side on a park bench, both smiling, autumn light",
    3: "Alice, Bob and Carol standing together in a kitchen, laughing, warm evening light",
}
CHARACTERS = [("character_a.safetensors", "Alice"), ("character_b.safetensors", "Bob"),
              ("character_c.safetensors", "Carol")]
HINT = ("FreeFuse: load each character LoRA with a FreeFuse LoRA Loader and type the word that names "
        "its character in the prompt (activation_words). Type the prompt once, in FreeFuse Text Encode. "
        "Mask Extract reads the attention of those words at step 6, block 16, and the Masked LoRA Sampler "
        "keeps each LoRA on its own character. Mask Preview shows who got which region.")


class Graph:
    def __init__(self):
        self.nodes, self.links = [], []

    def node(self, kind, pos, widgets=(), inputs=(), outputs=(), size=(300, 110)):
        node = {"id": len(self.nodes) + 1, "type": kind, "pos": list(pos), "size": list(size), "flags": {},
                "order": len(self.nodes), "mode": 0,
                "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)],
                "properties": {"Node name for S&R": kind}, "widgets_values": list(widgets)}
        self.nodes.append(node)
        return node

    def link(self, source, out_slot, target, in_name):
        link_id = len(self.links) + 1
        slot = next(i for i, s in enumerate(target["inputs"]) if s["name"] == in_name)
        kind = source["outputs"][out_slot]["type"]
        self.links.append([link_id, source["id"], out_slot, target["id"], slot, kind])
        source["outputs"][out_slot]["links"].append(link_id)
        target["inputs"][slot]["link"] = link_id

    def to_json(self):
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def freefuse_pair(g: Graph, x: int, schedule: tuple[int, int, int, int], model, positive, latent, vae):
    """Mask Extract (steps, mask step, mask block, superpixel px as given) and the Masked LoRA Sampler after
    it; `model`, `positive`, `vae` are (node, output slot)."""
    steps, step, block, superpixel_px = schedule
    extract = g.node("FreeFuseMaskExtract", (x, 200),
                     [0, "fixed", steps, 1.0, "euler", "simple", 1.0, step, block, "joint", 1.0, "vae", superpixel_px],
                     inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                             ("latent_image", "LATENT"), ("vae", "VAE")],
                     outputs=[("freefuse_masks", "FREEFUSE_MASKS")], size=(340, 420))
    g.link(*model, extract, "model")
    g.link(*positive, extract, "positive")
    g.link(latent, 0, extract, "latent_image")
    g.link(*vae, extract, "vae")
    sampler = g.node("FreeFuseMaskedSampler", (x + 380, 200), ["restart", "keep", False],
                     inputs=[("freefuse_masks", "FREEFUSE_MASKS")], outputs=[("LATENT", "LATENT")])
    g.link(extract, 0, sampler, "freefuse_masks")
    return extract, sampler


def workflow(subjects: int, style: bool) -> dict:
    g = Graph()
    unet = g.node("UNETLoader", (0, 0), ["flux1-dev.safetensors", "default"], outputs=[("MODEL", "MODEL")])
    model, x = unet, 340
    loras = [(n, w) for n, w in CHARACTERS[:subjects]] + ([("style.safetensors", "")] if style else [])
    for name, words in loras:
        loader = g.node("FreeFuseLoraLoader", (x, 0), [name, 1.0, words], inputs=[("model", "MODEL")],
                        outputs=[("MODEL", "MODEL")])
        g.link(model, 0, loader, "model")
        model, x = loader, x + 320
    clip = g.node("DualCLIPLoader", (0, 200), ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"],
                  outputs=[("CLIP", "CLIP")])
    prompt = PROMPTS[subjects] + (", watercolor style" if style else "")
    encode = g.node("FreeFuseTextEncode", (340, 200), [prompt], inputs=[("clip", "CLIP")],
                    outputs=[("CONDITIONING", "CONDITIONING")], size=(400, 160))
    g.link(clip, 0, encode, "clip")
    guidance = g.node("FluxGuidance", (780, 200), [3.5], inputs=[("conditioning", "CONDITIONING")],
                      outputs=[("CONDITIONING", "CONDITIONING")])
    g.link(encode, 0, guidance, "conditioning")
    latent = g.node("EmptyLatentImage", (0, 420), [1024, 1024, 1], outputs=[("LATENT", "LATENT")])
    vae = g.node("VAELoader", (0, 580), ["ae.safetensors"], outputs=[("VAE", "VAE")])
    extract, sampler = freefuse_pair(g, 1120, (28, 6, 16, 192), (model, 0), (guidance, 0), latent, (vae, 0))
    decode = g.node("VAEDecode", (1840, 200), inputs=[("samples", "LATENT"), ("vae", "VAE")],
                    outputs=[("IMAGE", "IMAGE")])
    g.link(sampler, 0, decode, "samples")
    g.link(vae, 0, decode, "vae")
    save = g.node("SaveImage", (2080, 200), ["FreeFuse"], inputs=[("images", "IMAGE")], size=(400, 420))
    g.link(decode, 0, save, "images")
    preview = g.node("FreeFuseMaskPreview", (1500, 420), [0.5], inputs=[("freefuse_masks", "FREEFUSE_MASKS")],
                     outputs=[("preview", "IMAGE"), ("masks", "MASK"), ("subjects", "STRING")], size=(340, 380))
    g.link(extract, 0, preview, "freefuse_masks")
    note = HINT + (" The style LoRA has no activation words: it is global, never masked." if style else "")
    g.node("Note", (340, 420), [note], size=(400, 200))
    return g.to_json()


TOY_PROMPT = "a photo of nexwen on the left and paxzor on the right"


def toy_workflow() -> dict:
    """The toy world shipped with the pack: FreeFuse next to the same LoRAs merged, 256 px, CPU-fast."""
    g = Graph()
    world = g.node("FreeFuseToyWorldLoader", (0, 0), [],
                   outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")])
    model, merged, x = world, world, 340
    for name in ("nexwen", "paxzor"):
        loader = g.node("FreeFuseLoraLoader", (x, 0), [f"toy_{name}.safetensors", 1.0, name],
                        inputs=[("model", "MODEL")], outputs=[("MODEL", "MODEL")])
        g.link(model, 0, loader, "model")
        stock = g.node("LoraLoaderModelOnly", (x, 640), [f"toy_{name}.safetensors", 1.0],
                       inputs=[("model", "MODEL")], outputs=[("MODEL", "MODEL")])
        g.link(merged, 0, stock, "model")
        model, merged, x = loader, stock, x + 320
    encode = g.node("FreeFuseTextEncode", (340, 200), [TOY_PROMPT], inputs=[("clip", "CLIP")],
                    outputs=[("CONDITIONING", "CONDITIONING")], size=(400, 160))
    g.link(world, 1, encode, "clip")
    latent = g.node("EmptyLatentImage", (0, 420), [256, 256, 1], outputs=[("LATENT", "LATENT")])
    extract, sampler = freefuse_pair(g, 1000, (20, 4, 1, 256), (model, 0), (encode, 0), latent, (world, 2))
    ksampler = g.node("KSampler", (1000, 640), [0, "fixed", 20, 1.0, "euler", "simple", 1.0],
                      inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                              ("latent_image", "LATENT")], outputs=[("LATENT", "LATENT")], size=(320, 260))
    g.link(merged, 0, ksampler, "model")
    g.link(encode, 0, ksampler, "positive")
    g.link(encode, 0, ksampler, "negative")
    g.link(latent, 0, ksampler, "latent_image")
    for source, prefix, y in ((sampler, "FreeFuse", 200), (ksampler, "merged", 640)):
        decode = g.node("VAEDecode", (1720, y), inputs=[("samples", "LATENT"), ("vae", "VAE")],
                        outputs=[("IMAGE", "IMAGE")])
        g.link(source, 0, decode, "samples")
        g.link(world, 2, decode, "vae")
        save = g.node("SaveImage", (1960, y), [prefix], inputs=[("images", "IMAGE")], size=(300, 320))
        g.link(decode, 0, save, "images")
    preview = g.node("FreeFuseMaskPreview", (1380, 420), [0.5], inputs=[("freefuse_masks", "FREEFUSE_MASKS")],
                     outputs=[("preview", "IMAGE"), ("masks", "MASK"), ("subjects", "STRING")], size=(300, 200))
    g.link(extract, 0, preview, "freefuse_masks")
    g.node("Note", (340, 420), ["The toy world ships with the pack: a small Flux trained on striped-ellipse "
                                "characters and two character LoRAs. Top: FreeFuse keeps each LoRA on its "
                                "character. Bottom: the same LoRAs merged with the stock loader."], size=(400, 160))
    return g.to_json()


def thumbnail(data: dict, path: Path) -> None:
    """A small drawing of the graph: nodes as boxes at their positions, links as lines."""
    xs = [n["pos"][0] for n in data["nodes"]] + [n["pos"][0] + n["size"][0] for n in data["nodes"]]
    ys = [n["pos"][1] for n in data["nodes"]] + [n["pos"][1] + n["size"][1] for n in data["nodes"]]
    scale = min(480 / (max(xs) - min(xs) + 40), 270 / (max(ys) - min(ys) + 40))
    image = Image.new("RGB", (512, 288), (32, 32, 36))
    draw = ImageDraw.Draw(image)
    place = {n["id"]: n for n in data["nodes"]}

    def point(x, y):
        return 16 + (x - min(xs)) * scale, 9 + (y - min(ys)) * scale

    for _, a, _, b, _, _ in data["links"]:
        pa, pb = place[a], place[b]
        draw.line([point(pa["pos"][0] + pa["size"][0], pa["pos"][1] + 20), point(pb["pos"][0], pb["pos"][1] + 20)],
                  fill=(150, 150, 90), width=2)
    for n in data["nodes"]:
        colour = (70, 110, 170) if n["type"].startswith("FreeFuse") else (80, 80, 88)
        x0, y0 = point(*n["pos"])
        x1, y1 = point(n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
        draw.rectangle([x0, y0, x1, y1], fill=colour, outline=(200, 200, 200))
    image.save(path)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, subjects, style in (("freefuse_two_subjects", 2, False), ("freefuse_three_subjects", 3, False),
                                  ("freefuse_two_subjects_style", 2, True)):
        data = workflow(subjects, style)
        (OUT / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
        thumbnail(data, OUT / f"{name}.jpg")
    data = toy_workflow()
    (OUT / "freefuse_toy_world.json").write_text(json.dumps(data, indent=1) + "\n")
    thumbnail(data, OUT / "freefuse_toy_world.jpg")


if __name__ == "__main__":
    main()
