"""The toy world's pipeline on the CPU: the layout masks against the rendered ellipses, the text
encoder's tokens against ComfyUI's own Flux tokenizer, a shipped LoRA through FreeFuse LoRA Loader,
and the training script end to end at toy size."""
import importlib
import json
import subprocess
import sys
from pathlib import Path

import comfy.text_encoders.flux
import pytest
import torch
from safetensors.torch import load_file

import nodes

ROOT = Path(__file__).resolve().parents[2]
LORA = "toy_nexwen.safetensors"


@pytest.fixture(scope="module")
def shipped(pack):
    model, clip, vae = pack.FreeFuseToyWorldLoader.execute().result
    return model, clip, vae


@pytest.mark.parametrize("n, stray", [(2, 0.0), (3, 0.01)])
def test_layout_masks_hold_each_rendered_ellipse(world, n, stray):
    """A token (2 x 2 latent pixels) that a character's ellipse mostly covers belongs to that
    character's layout mask, and every character covers some token of its own mask. With three,
    a widest ellipse jittered towards a cut reaches one token column past it (14 % of scenes, under
    1 % of covered tokens)."""
    roster = world.roster(0)
    casts = [[roster[(i + j) % len(roster)] for j in range(n)] for i in range(256)]
    _, alpha = world.render(world.scenes(casts, torch.Generator().manual_seed(3)))
    covered = torch.nn.functional.avg_pool2d(alpha[:, :n], 2) > 0.5     # [B, n, 16, 16]
    masks = world.layout_masks(n).bool()                                  # [n, 16, 16]
    assert (covered & ~masks[None]).sum() <= stray * covered.sum()
    assert (covered & masks[None]).flatten(2).any(-1).all()


def test_text_encoder_tokenizes_like_comfyui_flux_tokenizer(shipped, world):
    _, clip, _ = shipped
    reference = comfy.text_encoders.flux.FluxTokenizer()
    roster = [c.name for c in world.roster(0)]
    for text in (world.caption(roster[:1]), world.caption(roster[:2]), world.caption(roster[2:5]),
                 "a photo of (nexwen:1.2) on the left and paxzor on the right"):
        assert clip.tokenize(text)["t5xxl"] == reference.tokenize_with_weights(text)["t5xxl"], text


def test_text_encode_finds_each_lora_name_in_a_toy_caption(pack, shipped, world):
    """FreeFuse Text Encode on the toy CLIP: each LoRA character's name owns its own T5 tokens,
    which span exactly the name."""
    _, clip, _ = shipped
    names = [c.name for c in world.lora_characters(world.roster(0), 0)]
    text = world.caption(names)
    prompt = pack.FreeFuseTextEncode.execute(clip=clip, text=text).result[0][0][1]["freefuse_prompt"]
    tokens = importlib.import_module(pack.__name__ + ".freefuse_core.tokens")
    found = tokens.find_subject_tokens(prompt.text, prompt.pieces, [(n, [n]) for n in names])
    for name, indices in zip(names, found):
        spans = [prompt.pieces[i] for i in indices]
        assert (min(p.start for p in spans), max(p.end for p in spans)) == (text.index(name),
                                                                             text.index(name) + len(name))


def test_shipped_lora_through_freefuse_loader_samples_like_the_stock_loader(pack, shipped, world):
    """Every layer of the file is matched, and without masks the FreeFuse loader samples exactly as
    ComfyUI's LoraLoaderModelOnly does with the same file."""
    model, clip, _ = shipped
    layers = {k.rsplit(".lora_down", 1)[0] for k in load_file(str(ROOT / "toyworld" / "checkpoints" / "loras" / LORA))
              if k.endswith(".lora_down.weight")}
    with torch.inference_mode():
        ours = pack.FreeFuseLoraLoader.execute(model=model, lora_name=LORA, strength=1.0,
                                               activation_words="nexwen").result[0]
        stock = nodes.LoraLoaderModelOnly().load_lora_model_only(model, LORA, 1.0)[0]
        positive = pack.FreeFuseTextEncode.execute(clip=clip, text=world.caption(["nexwen", "paxzor"])).result[0]
        latent = nodes.EmptyLatentImage().generate(256, 256, 1)[0]

        def sample(m):
            return nodes.common_ksampler(m, 0, 3, 1.0, "euler", "simple", positive, positive, latent)[0]["samples"]

        base, with_ours, with_stock = sample(model), sample(ours), sample(stock)
    loras = importlib.import_module(pack.__name__ + ".freefuse_comfy.loras")
    assert len(loras.load_freefuse_lora(model, LORA, 1.0, ("nexwen",)).parts) == len(layers) > 0
    torch.testing.assert_close(with_ours, with_stock, rtol=1e-4, atol=1e-4)
    assert (with_ours - base).abs().max() > 1e-2


def _train_quick(out: Path) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "toyworld" / "train.py"), "--out", str(out), "--quick"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "training.json").read_text())


def test_training_runs_end_to_end_into_a_fresh_folder_and_repeats_from_its_seed(toy, world, tmp_path):
    """`toyworld/train.py --quick` (a small run of every stage, the localisation term included),
    twice: the same seed writes the same weights, and the files load as the world the loader gives."""
    folder, repeat = tmp_path / "a", tmp_path / "b"
    report, again = _train_quick(folder), _train_quick(repeat)
    files = sorted(p.relative_to(folder) for p in folder.rglob("*.safetensors"))
    assert len(files) == 5
    for name in files:
        first, second = load_file(str(folder / name)), load_file(str(repeat / name))
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert report["base_loss_last_100"] == again["base_loss_last_100"]
    assert report["localise"] > 0 and 0 < report["localisation_last_100"] < 20
    looks = [c.name for c in world.lora_characters(world.roster(0), 0)]
    assert report["lora_characters"] == looks and report["base_steps"] == 20
    for name in looks:
        sd = load_file(str(folder / "loras" / f"toy_{name}.safetensors"))
        assert sd and all(k.startswith("diffusion_model.") for k in sd)
        assert {v.shape[0] for k, v in sd.items() if k.endswith("lora_down.weight")} == {8}
    model, clip, _ = toy.load(folder)
    assert sum(p.numel() for p in model.model.diffusion_model.parameters()) > 5e6
    assert clip.tokenize(world.caption(looks[:2]))["t5xxl"]
