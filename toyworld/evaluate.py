"""Fidelity of FreeFuse on the toy world, run through the pack's own nodes inside ComfyUI.

    python3 toyworld/evaluate.py --out docs/fidelity [--device cuda] [--seeds 12] [--variants all]

Held-out prompts name two LoRA characters (every ordered pair of the three, left / right) and,
reported without a threshold, all three (every order). Each prompt runs `--seeds` seeds in batches
of `--batch` through each variant: no LoRA, each LoRA alone, both merged (stock LoRA loader),
ground-truth masks (the layout halves given to the Masked LoRA Sampler: the upper bound), FreeFuse
with the pack's defaults and one setting changed at a time. Per generated latent and character:

- present: the region's mean minus the background's is at least half an identity's norm;
- identity right: of all roster and LoRA looks, the region's mean is closest (cosine) to the one
  its name should have (the LoRA's look where that LoRA is loaded, else the base look);
- identity leak: least-squares weights of the region's mean on the prompt's LoRA looks,
  `1 - w_own / sum w` (0 clean, 0.5 a two-way blend); texture leak: the same on the stripes;
- mask IoU: the extracted token mask of each subject against its layout half (or third).
Writes `results.json` and sample grids into `--out`.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

ARGS = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ARGS.add_argument("--out", type=Path, required=True)
ARGS.add_argument("--checkpoints", type=Path, default=Path(__file__).resolve().parent / "checkpoints")
ARGS.add_argument("--device", default="cpu")
ARGS.add_argument("--seeds", type=int, default=12, help="seeds per two-character prompt (6 prompts)")
ARGS.add_argument("--three-seeds", type=int, default=4, help="seeds per three-character prompt (6 prompts)")
ARGS.add_argument("--variants", default="all", help="comma-separated names, or 'all'")
ARGS.add_argument("--batch", type=int, default=4, help="images per sampling call (divides --seeds)")
ARGS = ARGS.parse_args()

sys.path.insert(0, str(Path(__file__).resolve().parent))
from boot import boot  # noqa: E402

pack, toy, world = boot(ARGS.device)
import folder_paths  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import nodes  # noqa: E402

STEPS, BATCH, SIZE = 20, ARGS.batch, 256
DEFAULT = dict(mask_step=4, mask_block=1, loras_before_mask="joint", mode="restart", modulation="keep",
               token_isolation=False, superpixel_px=256)
CHANGES = {
    "FreeFuse default": {},
    "continue": {"mode": "continue"},
    "LoRAs off before k": {"loras_before_mask": "off"},
    "modulation dropped": {"modulation": "drop"}, "token isolation": {"token_isolation": True},
    "block 0": {"mask_block": 0}, "block 2": {"mask_block": 2},
    "step 2": {"mask_step": 2}, "step 6": {"mask_step": 6}, "step 10": {"mask_step": 10},
    "superpixels 128 px": {"superpixel_px": 128},
    "superpixels 96 px": {"superpixel_px": 96}, "superpixels 64 px": {"superpixel_px": 64},
}


def run(node: str, **inputs):
    return getattr(pack, node).execute(**inputs).result


class Toy:
    def __init__(self, folder: Path):
        self.model, self.clip, self.vae = toy.load(folder)
        # first in the list: the shipped LoRAs of the same names must not stand in for these
        folder_paths.add_model_folder_path("loras", str(folder / "loras"), is_default=True)
        trained = json.loads((folder / "training.json").read_text())
        self.roster = world.roster(trained["seed"])
        self.looks = {c.name: c for c in world.lora_characters(self.roster, trained["seed"])}
        self.candidates = torch.stack([c.identity for c in self.roster] + [c.identity for c in self.looks.values()])

    @staticmethod
    def lora_file(name: str) -> str:
        return f"toy_{name}.safetensors"

    def freefuse_model(self, names):
        model = self.model
        for name in names:
            model = run("FreeFuseLoraLoader", model=model, lora_name=self.lora_file(name), strength=1.0,
                        activation_words=name)[0]
        return model

    def stock_model(self, names):
        model = self.model
        for name in names:
            model = nodes.LoraLoaderModelOnly().load_lora_model_only(model, self.lora_file(name), 1.0)[0]
        return model

    def expected(self, name: str, loaded: tuple[str, ...]) -> int:
        """Index in `candidates` of the look `name` should have with the LoRAs `loaded`."""
        if name in loaded:
            return len(self.roster) + list(self.looks).index(name)
        return [c.name for c in self.roster].index(name)


def sample(toy_: Toy, variant: str, names: list[str], seed: int):
    """(latents in model space [B, 16, 32, 32], token masks [B, N, n] or None, LoRAs loaded)."""
    positive = run("FreeFuseTextEncode", clip=toy_.clip, text=world.caption(names))[0]
    latent = nodes.EmptyLatentImage().generate(SIZE, SIZE, BATCH)[0]
    loaded, masks = tuple(names), None
    if variant in ("no LoRA", "merged") or variant.endswith(" alone"):
        loaded = () if variant == "no LoRA" else tuple(names) if variant == "merged" else (names[int(variant[5]) - 1],)
        out = nodes.common_ksampler(toy_.stock_model(loaded), seed, STEPS, 1.0, "euler", "simple", positive,
                                    positive, latent)[0]["samples"]
    else:
        settings = {**DEFAULT, **CHANGES.get(variant, {})}
        masks = run("FreeFuseMaskExtract", model=toy_.freefuse_model(names), positive=positive, latent_image=latent,
                    vae=toy_.vae, seed=seed, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple",
                    denoise=1.0, mask_step=settings["mask_step"], mask_block=settings["mask_block"],
                    loras_before_mask=settings["loras_before_mask"], slic_sigma=1.0, x0_image="vae",
                    superpixel_px=settings["superpixel_px"])[0]
        if variant == "ground-truth masks":
            layout = world.layout_masks(len(names)).flatten(1).t()[None].expand(BATCH, -1, -1)
            masks = dataclasses.replace(masks, token_masks=layout.contiguous())
        out = run("FreeFuseMaskedSampler", freefuse_masks=masks, mode=settings["mode"],
                  modulation=settings["modulation"], token_isolation=settings["token_isolation"])[0]["samples"]
        masks = masks.token_masks
    z = toy_.model.model.process_latent_in(out.float())
    return z, masks, loaded


def measure(toy_: Toy, z, masks, names, loaded) -> dict[str, torch.Tensor]:
    """Per-sample, per-character metrics (tensors `[B, n]`)."""
    n = len(names)
    inside, outside = world.nominal_regions(n)
    fg = world.region_means(z, inside, outside)
    present = fg.norm(dim=-1) >= 0.5 * world.IDENTITY_NORM
    best = world.identity_scores(fg, toy_.candidates).argmax(-1)
    want = torch.tensor([toy_.expected(name, loaded) for name in names])
    looks = [toy_.looks[name] for name in names]
    weights = world.mix_weights(fg, torch.stack([look.identity for look in looks]))
    out = {"present": present.float(), "identity right": (best == want).float(),
           "identity leak": torch.stack([world.leak(weights[:, c], c) for c in range(n)], dim=1),
           "texture leak": torch.stack([world.leak(world.texture_weights(z, inside[c], looks), c)
                                        for c in range(n)], dim=1)}
    if masks is not None:
        grid = z.shape[-1] // 2
        mine = masks.reshape(masks.shape[0], grid, grid, n).permute(0, 3, 1, 2) > 0.5
        layout = world.layout_masks(n, grid) > 0.5
        inter = (mine & layout).sum((-2, -1)).float()
        union = (mine | layout).sum((-2, -1)).float().clamp(min=1)
        out["mask IoU"] = inter / union
    return out


def prompts(count: int) -> list[list[str]]:
    return [list(p) for p in itertools.permutations(range(3), count)]


def evaluate(toy_: Toy, variants: list[str], count: int, seeds: int) -> tuple[dict, dict]:
    names = list(toy_.looks)
    results, grids = {}, {}
    for variant in variants:
        start = time.perf_counter()
        rows: dict[str, list] = {}
        for order in prompts(count):
            cast = [names[i] for i in order]
            for seed in range(0, seeds, BATCH):
                z, masks, loaded = sample(toy_, variant, cast, 1000 + seed)
                for k, v in measure(toy_, z, masks, cast, loaded).items():
                    rows.setdefault(k, []).append(v)
                if order == [0, 1] or order == [0, 1, 2]:
                    grids.setdefault(variant, (z[:BATCH], masks))
        table = {k: float(torch.cat(v).mean()) for k, v in rows.items()}
        both = torch.cat(rows["present"]).prod(-1)
        right = torch.cat(rows["identity right"]).prod(-1)
        table.update({"all present": float(both.mean()), "all right": float(right.mean()),
                      "samples": int(both.numel()), "seconds": time.perf_counter() - start})
        results[variant] = table
    return results, grids


def save_grid(toy_: Toy, grids: dict, path: Path):
    """One row per variant (the first prompt's batch), decoded by the toy VAE."""
    rows = []
    for z, _ in grids.values():
        raw = toy_.model.model.process_latent_out(z)
        images = toy_.vae.decode(raw)[..., :3].clamp(0, 1)
        rows.append(torch.cat(list(images), dim=1))
    picture = (torch.cat(rows, dim=0).numpy() * 255).round().astype("uint8")
    Image.fromarray(picture).save(path)


def main():
    toy_ = Toy(ARGS.checkpoints)
    variants = ["no LoRA", "LoRA 1 alone", "LoRA 2 alone", "merged", "ground-truth masks", *CHANGES]
    if ARGS.variants != "all":
        variants = [v for v in variants if v in ARGS.variants.split(",")]
    ARGS.out.mkdir(parents=True, exist_ok=True)
    two, grids = evaluate(toy_, variants, 2, ARGS.seeds)
    shown = {k: grids[k] for k in ("no LoRA", "merged", "FreeFuse default", "ground-truth masks") if k in grids}
    if shown:
        save_grid(toy_, shown, ARGS.out / "grid_two.png")
    three_variants = [v for v in ("merged", "ground-truth masks", "FreeFuse default") if v in variants]
    three, grids3 = evaluate(toy_, three_variants, 3, ARGS.three_seeds) if ARGS.three_seeds else ({}, {})
    if grids3:
        save_grid(toy_, grids3, ARGS.out / "grid_three.png")
    result = {"steps": STEPS, "defaults": DEFAULT, "two": two, "three": three}
    (ARGS.out / "results.json").write_text(json.dumps(result, indent=1))
    sys.stdout.write("\n".join(table_lines(result)) + "\n")


def table_lines(result: dict) -> list[str]:
    """One line per variant: the metric means (the table of docs/fidelity.md)."""
    lines = []
    for part in ("two", "three"):
        for variant, row in result[part].items():
            lines.append(f"{part} {variant:22s} " + " ".join(
                f"{k[:8]}={v:.3f}" for k, v in row.items() if k not in ("samples", "seconds")))
    return lines


if __name__ == "__main__":
    with torch.inference_mode():
        main()
