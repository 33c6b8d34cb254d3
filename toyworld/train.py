"""Train the toy world: the base Flux with its text embedding, then one rank-8 LoRA per LoRA character.

    python3 toyworld/train.py --out toyworld/checkpoints --device cuda --amp --stop-after 1771   # the shipped run
    python3 toyworld/train.py --out /tmp/toy --quick          # seconds on a CPU: the whole pipeline, tiny

Base: rectified flow as Flux is trained, `x = (1 - s) z0 + s e`, loss `|(x0_hat - z0) / s|^2` (the
velocity error), `s` logit-normal, through ComfyUI's own `apply_model`, on scenes of 1-3 roster
characters with their captions. LoRAs: the base and the text encoder frozen, `y += (x A^T) B^T` on
the layers `--lora-layers` names (default: the image-stream attention and MLP layers of the double
blocks and every single-block layer), trained only on single-character scenes of their character's
new look under its name. Written as
safetensors in ComfyUI's own key format (`diffusion_model.<layer>.lora_down.weight`, ...).

Localisation (`--localise`, base training only): FreeFuse reads each subject's word attention at one
double block and expects it on the subject, as FLUX's web-scale training leaves it. The toy world
is too small to grow that on its own (its names' attention stayed flat), so the base training adds,
at every double block, with `A` the head-averaged softmax over image keys of post-RoPE `q . k`,
`R_c` the token-grid cells that character `c` covers and `I_c` its name's tokens:

    L_loc = - mean_c log sum_{j in R_c} mean_{t in I_c} A[t, j]            (name -> its region, Eq. 5/8)
            - mean_c mean_{i in R_c} log sum_{j in R_c} A[i, j]              (region -> itself, Eq. 10)
            - mean_c mean_{i in R_c} log sum_{t in I_c} B[i, t]              (region -> its name)

with `B` the head-averaged softmax of image queries over the keys of the prompt's name tokens only,
the sum weighted by `--localise` (a lone character, whose place the noise decides, by `1 - s`).
The extraction node reads only the first two (Eq. 5-10); the third ties each region to its own name.
Everything is drawn from `--seed`; the same seed on the same device gives the same files up to the
device's own nondeterministic kernels.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path

ARGS = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ARGS.add_argument("--out", type=Path, required=True)
ARGS.add_argument("--device", default="cpu")
ARGS.add_argument("--seed", type=int, default=0)
ARGS.add_argument("--base-steps", type=int, default=2000)
ARGS.add_argument("--lora-steps", type=int, default=400)
ARGS.add_argument("--batch", type=int, default=256)
ARGS.add_argument("--max-minutes", type=float, default=0, help="stop the base training early (0: never)")
ARGS.add_argument("--stop-after", type=int, default=0,
                  help="stop the base training after this many steps, the schedule still set by --base-steps")
ARGS.add_argument("--base-from", type=Path, help="train only the LoRAs, on the base model and text encoder here")
ARGS.add_argument("--lora-layers", default="image", choices=["all", "image", "double-image"],
                  help="'all' linear layers of the blocks (as trainers do); 'image': the image-stream "
                       "attention and MLP layers and the single blocks, no text-stream or modulation layer; "
                       "'double-image': the double blocks' image-stream attention and MLP layers only")
ARGS.add_argument("--localise", type=float, default=0.02,
                  help="weight of the attention-localisation term of the base training (0: off)")
ARGS.add_argument("--amp", action="store_true", help="bf16 autocast for the base training (CUDA)")
ARGS.add_argument("--lora-lr", type=float, default=1e-3)
ARGS.add_argument("--quick", action="store_true", help="20 base and 5 LoRA steps of 8 scenes: checks the pipeline")
ARGS = ARGS.parse_args()
if ARGS.quick:
    ARGS.base_steps, ARGS.lora_steps, ARGS.batch = 20, 5, 8

sys.path.insert(0, str(Path(__file__).resolve().parent))
from boot import boot  # noqa: E402

pack, toy, world = boot(ARGS.device)
import comfy.model_management  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

prompt = importlib.import_module(pack.__name__ + ".freefuse_comfy.prompt")
core = importlib.import_module(pack.__name__ + ".freefuse_core")
log = logging.getLogger("toyworld.train")
RANK, PIECES = 8, 8
LAYERS = {"image": (".img_attn.", ".img_mlp.", ".linear1", ".linear2"), "double-image": (".img_attn.", ".img_mlp.")}


class Captions:
    """T5 ids of captions through ComfyUI's tokenizer (cached) and the toy text encoding."""

    def __init__(self, clip, device):
        self.clip, self.device, self.cache, self.names = clip, device, {}, {}
        self.t5 = toy.text_model(clip)

    def ids(self, captions: list[str]) -> torch.Tensor:
        for c in captions:
            if c not in self.cache:
                self.cache[c] = [t[0] for t in self.clip.tokenize(c)["t5xxl"][0]]
        return torch.tensor([self.cache[c] for c in captions], device=self.device)

    def encode(self, captions: list[str]) -> torch.Tensor:
        return self.t5(self.ids(captions), None)[0]

    def name_tokens(self, casts) -> tuple[torch.Tensor, torch.Tensor]:
        """Per scene and character slot, the T5 token indices of its name (found as the extraction
        node finds activation words) and their averaging weights: `[B, 3, PIECES]` each."""
        index = torch.zeros(len(casts), 3, PIECES, dtype=torch.long)
        weight = torch.zeros(len(casts), 3, PIECES)
        for b, cast in enumerate(casts):
            names = [c.name for c in cast]
            text = world.caption(names)
            if text not in self.names:
                meta = prompt.prompt_tokens(self.clip, text, self.ids([text])[0].tolist())
                self.names[text] = core.find_subject_tokens(text, meta.pieces, [(n, [n]) for n in names])
            for c, rows in enumerate(self.names[text]):
                index[b, c, :len(rows)] = torch.tensor(rows)
                weight[b, c, :len(rows)] = 1.0 / len(rows)
        return index.to(self.device), weight.to(self.device)


class Localisation:
    """`L_loc` of the module docstring, read through ComfyUI's attention override at each double block."""

    def __init__(self, index, weight, region, scene_weight):
        self.index, self.weight, self.region, self.scene_weight = index, weight, region, scene_weight
        self.terms: list[torch.Tensor] = []

    def override(self, func, q, k, v, heads, **kwargs):
        if kwargs["transformer_options"].get("block_type") == "double":
            self.terms.append(self.loss(q, k))
        return func(q, k, v, heads, **kwargs)

    def loss(self, q, k) -> torch.Tensor:
        batch, heads, length, dim = q.shape
        n = self.region.shape[-1]
        txt = length - n
        k_img = k[:, :, txt:].float()
        rows = self.index.flatten(1)[:, None, :, None].expand(-1, heads, -1, dim)
        names = torch.gather(q[:, :, :txt].float(), 2, rows)                          # [B, H, 3P, D]
        cross = (names @ k_img.transpose(-1, -2) / dim ** 0.5).softmax(-1).mean(1)   # [B, 3P, N]
        subject = torch.einsum("bcpn,bcp->bcn", cross.view(batch, 3, PIECES, n), self.weight)
        present = self.weight.sum(-1) > 0                                               # [B, 3]
        name_term = -(subject * self.region).sum(-1).clamp(min=1e-4).log()
        q_img = q[:, :, txt:].float()
        reads = q_img @ torch.gather(k[:, :, :txt].float(), 2, rows).transpose(-1, -2) / dim ** 0.5  # [B, H, N, 3P]
        reads = reads.masked_fill(self.weight.flatten(1)[:, None, None] == 0, float("-inf")).softmax(-1).mean(1)
        mine = reads.view(batch, n, 3, PIECES).sum(-1).transpose(1, 2).clamp(min=1e-4).log()           # [B, 3, N]
        own = (q_img @ k_img.transpose(-1, -2) / dim ** 0.5).softmax(-1).mean(1)       # [B, N, N]
        kept = torch.einsum("bij,bcj->bci", own, self.region).clamp(min=1e-4).log()   # [B, 3, N]
        cells = self.region.sum(-1).clamp(min=1)
        region_term = -((kept + mine) * self.region).sum(-1) / cells
        per_scene = ((name_term + region_term) * present).sum(-1) / present.sum(-1).clamp(min=1)
        return (per_scene * self.scene_weight).mean()

    def value(self) -> torch.Tensor:
        out = torch.stack(self.terms).mean()
        self.terms.clear()
        return out


def tail_mean(values: list[float]) -> float:
    """The mean of the last 100 values (what training.json records of a loss)."""
    return sum(values[-100:]) / len(values[-100:])


def init_weights(root, generator):
    """Default Linear init, norm scales 1, embeddings N(0, 1) (T5's position bias 0), and Flux's
    modulation and final layers at zero. ComfyUI's layers skip initialisation: every parameter is
    set here."""
    for name, module in root.named_modules():
        if isinstance(module, torch.nn.Embedding):
            with torch.no_grad():
                module.weight.normal_(0, 1, generator=generator)
            if "relative_attention_bias" in name:
                torch.nn.init.zeros_(module.weight)
    for name, module in root.named_modules():
        if isinstance(module, torch.nn.Linear):
            bound = 1 / module.in_features ** 0.5
            with torch.no_grad():
                module.weight.uniform_(-bound, bound, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            if "mod" in name or name.startswith("final_layer"):
                torch.nn.init.zeros_(module.weight)
    done = {f"{n}.{k}" for n, m in root.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))
            for k, _ in m.named_parameters(recurse=False)}
    for name, p in root.named_parameters():
        if name not in done:
            torch.nn.init.ones_(p) if "norm" in name or name.endswith("scale") else torch.nn.init.zeros_(p)


def random_casts(generator, roster, batch: int, counts=(1, 2, 3), weights=(0.2, 0.65, 0.15)):
    ns = torch.multinomial(torch.tensor(weights), batch, replacement=True, generator=generator) + counts[0]
    return [[roster[i] for i in torch.randperm(len(roster), generator=generator)[:n].tolist()] for n in ns.tolist()]


def flow_loss(model, captions: Captions, z0, texts, generator, localise=None):
    """(the velocity error, `L_loc` when `localise = (casts, coverage)`, else 0)."""
    batch = z0.shape[0]
    s = torch.sigmoid(torch.randn(batch, generator=generator)).to(z0.device).clamp(0.02, 0.98)
    noise = torch.randn(z0.shape, generator=generator).to(z0.device)
    x = (1 - s[:, None, None, None]) * z0 + s[:, None, None, None] * noise
    context = captions.encode(texts)
    pooled = torch.zeros(batch, toy.FLUX["vec_in_dim"], device=z0.device)
    options, term = {}, None
    if localise is not None:
        casts, coverage = localise
        region = (torch.nn.functional.avg_pool2d(coverage, 2) > 0.5).flatten(2).float()   # [B, 3, N]
        lone = torch.tensor([len(c) == 1 for c in casts], device=z0.device)
        term = Localisation(*captions.name_tokens(casts), region, torch.where(lone, 1 - s, torch.ones_like(s)))
        options["optimized_attention_override"] = term.override
    denoised = model.apply_model(x, s, c_crossattn=context, y=pooled, transformer_options=options)
    loss = (((denoised - z0) / s[:, None, None, None]) ** 2).mean()
    return loss, (term.value() if term is not None else torch.zeros((), device=z0.device))


def train_base(model, captions: Captions, roster, steps: int, generator, device) -> tuple[list[float], list[float]]:
    params = list(model.diffusion_model.parameters()) + list(captions.t5.parameters())
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(params, lr=6e-4, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda i: min(1.0, (i + 1) / 200) * (
        1.0 if i < 0.7 * steps else 0.3))
    losses, localisation = [], []
    start = time.perf_counter()
    for step in range(steps):
        if (ARGS.max_minutes and time.perf_counter() - start > 60 * ARGS.max_minutes) or step == ARGS.stop_after > 0:
            log.info("base training stopped early at step %d", step)
            break
        casts = random_casts(generator, roster, ARGS.batch)
        batch = world.scenes(casts, generator)
        z0, coverage = world.render(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ARGS.amp):
            flow, local = flow_loss(model, captions, z0, batch.captions, generator,
                                    (casts, coverage) if ARGS.localise else None)
        loss = flow + ARGS.localise * local
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        schedule.step()
        losses.append(flow.item())
        localisation.append(local.item())
        if step % 250 == 0:
            log.info("base step %d loss %.4f localisation %.3f (%.0f s)", step, tail_mean(losses),
                     tail_mean(localisation), time.perf_counter() - start)
    return losses, localisation


class LoraHooks:
    """`y += (x A^T) B^T` on every linear layer of the double and single blocks (B starts at 0)."""

    def __init__(self, diffusion_model, generator, device, layers: str):
        self.layers = {}
        self.handles = []
        for name, module in diffusion_model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.startswith(("double_blocks.", "single_blocks.")) and (
                    layers == "all" or any(p in name for p in LAYERS[layers])):
                down = (torch.randn(RANK, module.in_features, generator=generator) / module.in_features ** 0.5)
                down = down.to(device).requires_grad_()
                up = torch.zeros(module.out_features, RANK, device=device, requires_grad=True)
                self.layers[name] = (down, up)
                self.handles.append(module.register_forward_hook(self._hook(down, up)))

    @staticmethod
    def _hook(down, up):
        def hook(module, inputs, output):
            return output + (inputs[0] @ down.t()) @ up.t()
        return hook

    def parameters(self):
        return [t for pair in self.layers.values() for t in pair]

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = {}
        for name, (down, up) in self.layers.items():
            sd[f"diffusion_model.{name}.lora_down.weight"] = down.detach().cpu().to(torch.float16).contiguous()
            sd[f"diffusion_model.{name}.lora_up.weight"] = up.detach().cpu().to(torch.float16).contiguous()
            sd[f"diffusion_model.{name}.alpha"] = torch.tensor(float(RANK), dtype=torch.float16)
        return sd

    def remove(self):
        for handle in self.handles:
            handle.remove()


def train_lora(model, captions: Captions, character, steps: int, generator, device) -> tuple[dict, list[float]]:
    hooks = LoraHooks(model.diffusion_model, generator, device, ARGS.lora_layers)
    optimiser = torch.optim.Adam(hooks.parameters(), lr=ARGS.lora_lr)
    losses = []
    for _ in range(steps):
        batch = world.scenes([[character]] * (ARGS.batch // 4), generator)
        z0, _ = world.render(batch, device)
        loss = flow_loss(model, captions, z0, batch.captions, generator)[0]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    hooks.remove()
    return hooks.state_dict(), losses


def text_state_dict(captions: Captions) -> dict[str, torch.Tensor]:
    ids = torch.tensor(sorted({i for row in captions.cache.values() for i in row}))
    sd = {f"t5.{k}": v.detach().cpu().float().contiguous() for k, v in captions.t5.state_dict().items()
          if k != "shared.weight"}
    return {**sd, "ids": ids.to(torch.int32), "rows": captions.t5.shared.weight.detach()[ids].cpu().float()}


def every_caption(roster) -> list[str]:
    """All captions the world can write, so the stored embedding covers each of their tokens."""
    names = [c.name for c in roster]
    out = [world.caption([a]) for a in names]
    out += [world.caption([a, b]) for a in names for b in names if a != b]
    out += [world.caption([a, b, c]) for a in names[:6] for b in names[:6] for c in names[:6] if len({a, b, c}) == 3]
    return out


def main():
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    device = torch.device(ARGS.device)
    torch.manual_seed(ARGS.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    comfy.model_management.in_training = True   # differentiable RoPE (ComfyUI's fast one has no backward)
    generator = torch.Generator().manual_seed(ARGS.seed)
    roster = world.roster(ARGS.seed)
    looks = world.lora_characters(roster, ARGS.seed)
    if ARGS.base_from:
        patcher, clip, _ = toy.load(ARGS.base_from)
    else:
        patcher, clip = toy.flux_model(), toy.text_encoder()
        init_weights(patcher.model.diffusion_model, generator)
        init_weights(toy.text_model(clip), generator)
    model = patcher.model.to(device)
    clip.cond_stage_model.to(device)
    captions = Captions(clip, device)
    captions.ids(every_caption(roster))
    start = time.perf_counter()
    ARGS.out.mkdir(parents=True, exist_ok=True)
    (ARGS.out / "loras").mkdir(exist_ok=True)
    if ARGS.base_from:   # the base run's own record
        trained = json.loads((ARGS.base_from / "training.json").read_text())
        kept = ("base_steps", "batch", "base_seconds", "base_loss_last_100", "schedule_steps", "localise",
                "localisation_last_100", "amp")
        base = {k: trained[k] for k in kept if k in trained}
    else:
        losses, localisation = train_base(model, captions, roster, ARGS.base_steps, generator, device)
        base = {"base_steps": len(losses), "batch": ARGS.batch, "base_seconds": time.perf_counter() - start,
                "base_loss_last_100": tail_mean(losses), "schedule_steps": ARGS.base_steps,
                "localise": ARGS.localise,
                "localisation_last_100": tail_mean(localisation), "amp": ARGS.amp}
    model.requires_grad_(False)
    captions.t5.requires_grad_(False)
    save_file({k: v.detach().cpu().to(torch.float16).contiguous()
               for k, v in model.diffusion_model.state_dict().items()}, str(ARGS.out / toy.FILES["model"]))
    save_file(text_state_dict(captions), str(ARGS.out / toy.FILES["text"]))
    lora_losses = {}
    for look in looks:
        sd, lora_losses[look.name] = train_lora(model, captions, look, ARGS.lora_steps, generator, device)
        save_file(sd, str(ARGS.out / "loras" / f"toy_{look.name}.safetensors"))
    report = {"seed": ARGS.seed, "device": str(device), **base, "lora_steps": ARGS.lora_steps,
              "lora_layers": ARGS.lora_layers, "lora_lr": ARGS.lora_lr, "seconds": time.perf_counter() - start,
              "lora_loss_last_100": {k: tail_mean(v) for k, v in lora_losses.items()},
              "roster": [c.name for c in roster], "lora_characters": [c.name for c in looks]}
    (ARGS.out / "training.json").write_text(json.dumps(report, indent=1))
    log.info("%s", json.dumps(report))


if __name__ == "__main__":
    # ComfyUI turns gradients off when it loads, and its Flux blocks add into their inputs in place
    # (`x += ...`): tensors saved for the backward pass are copied as they are saved.
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(torch.Tensor.clone, lambda t: t):
        main()
