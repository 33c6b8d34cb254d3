"""The toy world: its scenes and metrics, the shipped checkpoints through ComfyUI, and a short
fidelity run of the evaluation script on the CPU (the full table is docs/fidelity.md).

The short run (6 ordered pairs x 4 seeds = 24 two-character samples per variant) measured on this
CPU: merged identity leak 0.513, ground-truth masks 0.172, FreeFuse default 0.173 with a mask IoU
of 0.812; the thresholds below are issue 7's (IoU floor 0.7, under the 0.812 measured)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
IOU_FLOOR = 0.7


def test_scenes_are_drawn_from_the_seed(world):
    roster = world.roster(0)
    casts = [[roster[0], roster[1]], [roster[2]]]
    a = world.render(world.scenes(casts, torch.Generator().manual_seed(5)))[0]
    b = world.render(world.scenes(casts, torch.Generator().manual_seed(5)))[0]
    c = world.render(world.scenes(casts, torch.Generator().manual_seed(6)))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert [x.name for x in world.roster(0)] == [x.name for x in roster]


def test_lora_characters_reuse_roster_names_without_shared_syllables(world):
    roster = world.roster(0)
    looks = world.lora_characters(roster, 0)
    names = [c.name for c in looks]
    assert len(names) == 3 and set(names) <= {c.name for c in roster}
    assert all(not (world.syllables(a) & world.syllables(b)) for a in names for b in names if a != b)
    assert all(not torch.equal(look.identity, next(c for c in roster if c.name == look.name).identity)
               for look in looks)


def test_metrics_read_identity_and_a_blend_from_rendered_scenes(world):
    roster = world.roster(0)
    left, right = roster[0], roster[1]
    batch = world.scenes([[left, right]] * 4, torch.Generator().manual_seed(1))
    z, _ = world.render(batch)
    inside, outside = world.nominal_regions(2)
    fg = world.region_means(z, inside, outside)
    candidates = torch.stack([c.identity for c in roster])
    assert world.identity_scores(fg, candidates).argmax(-1).tolist() == [[0, 1]] * 4
    basis = torch.stack([left.identity, right.identity])
    clean = world.leak(world.mix_weights(fg[:, 0], basis), 0)
    blended = world.leak(world.mix_weights((fg[:, 0] + fg[:, 1]) / 2, basis), 0)
    assert clean.max() < 0.2 and (blended - 0.5).abs().max() < 0.1   # stripes and background: ~0.1 of noise
    texture = world.leak(world.texture_weights(z, inside[0], [left, right]), 0)
    assert texture.max() < 0.2


def test_layout_masks_partition_the_token_grid(world):
    for n in (2, 3):
        masks = world.layout_masks(n)
        assert masks.shape == (n, 16, 16) and torch.equal(masks.sum(0), torch.ones(16, 16))
    halves = world.layout_masks(2)
    assert halves[0, :, :8].all() and not halves[0, :, 8:].any()


def test_loader_node_gives_the_shipped_world(pack, toy, world):
    model, clip, vae = pack.FreeFuseToyWorldLoader.execute().result
    assert type(model.model.diffusion_model).__name__ == "Flux"
    assert model.model.diffusion_model.params.hidden_size == toy.FLUX["hidden_size"]
    text = world.caption(["nexwen", "paxzor"])
    tokens = clip.tokenize(text)
    encoded = clip.encode_from_tokens_scheduled(tokens)[0][0]
    ids = torch.tensor([[t[0] for t in tokens["t5xxl"][0]]])
    with torch.no_grad():
        trained = toy.text_model(clip)(ids, None)[0]   # the path training used
    torch.testing.assert_close(encoded, trained)
    z = world.render(world.scenes([[world.roster(0)[0]]], torch.Generator().manual_seed(2)))[0]
    rgb = vae.decode(model.model.process_latent_out(z))[0, ::8, ::8, :3]
    want = (torch.einsum("chw,rc->hwr", torch.tanh(z[0] / 3) * 3, toy.rgb_matrix()) + 0.5).clamp(0, 1)
    torch.testing.assert_close(rgb, want, atol=2e-3, rtol=0)


def test_missing_checkpoints_name_the_node_and_the_fix(toy, tmp_path):
    with pytest.raises(FileNotFoundError, match="FreeFuse Toy World Loader.*train.py"):
        toy.load(tmp_path)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fidelity")
    done = subprocess.run([sys.executable, str(ROOT / "toyworld" / "evaluate.py"), "--out", str(out),
                           "--device", "cpu", "--seeds", "4", "--three-seeds", "0",
                           "--variants", "merged,ground-truth masks,FreeFuse default"],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), out


def test_short_fidelity_run_through_the_nodes(short_run):
    results, out = short_run
    two = results["two"]
    assert set(two) == {"merged", "ground-truth masks", "FreeFuse default"}
    assert all(row["samples"] == 24 for row in two.values())   # 6 ordered pairs x 4 seeds
    assert two["ground-truth masks"]["mask IoU"] == 1.0
    assert 0.0 <= two["FreeFuse default"]["mask IoU"] < 1.0
    for row in two.values():
        assert all(0.0 <= row[k] <= 1.0 for k in ("present", "identity right", "identity leak", "texture leak"))
    assert (out / "grid_two.png").is_file()


def test_freefuse_masks_stop_the_merged_identity_leak(short_run):
    two = short_run[0]["two"]
    merged, truth, freefuse = (two[k]["identity leak"] for k in ("merged", "ground-truth masks", "FreeFuse default"))
    assert merged >= 0.4, "merged LoRAs must blend the two looks for the measurement to mean anything"
    assert freefuse <= 0.5 * merged
    assert abs(freefuse - truth) <= 0.1
    assert two["FreeFuse default"]["mask IoU"] >= IOU_FLOOR
