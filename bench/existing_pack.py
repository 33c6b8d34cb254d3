"""Row f: the existing FreeFuse pack for ComfyUI (yaoliliu/FreeFuse, folder `freefuse_comfyui`), run in the
benchmark's process on the same model, LoRAs, conditioning and latent as rows b to e.

Its Flux workflow (`workflows/flux_freefuse_api.json`) as a graph of its nodes: a `FreeFuseLoRALoader` per
LoRA (bypass LoRAs), `FreeFuseConceptMap`, `FreeFuseTokenPositions`, `FreeFusePhase1Sampler` (a first
sampling pass that stops at `collect_step` and returns masks), `FreeFuseMaskApplicator`, then ComfyUI's
KSampler for the whole second pass; the workflow's settings (collect step 5, block 18, temperature 4000,
top-k 0.1, attention bias on every block). The benchmark has no text encoder, so the token positions that
`FreeFuseTokenPositions` would find with a CLIP are given directly: each activation word's index in the
prompt, the rest of the prompt's words as the background. The pack is imported from a folder given on the
command line (its source is not part of this repository) under a name of its own, so that its nodes do not
take the place of ours in ComfyUI's node list.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

NAME = "existing_freefuse_pack"
SETTINGS = dict(collect_step=5, collect_block=18, temperature=4000.0, top_k_ratio=0.1)


def load(folder: str):
    """The pack's `nodes` package, imported from `folder` (its `freefuse_comfyui`)."""
    init = Path(folder) / "__init__.py"
    spec = importlib.util.spec_from_file_location(NAME, init, submodule_search_locations=[str(init.parent)])
    if spec is None or not init.is_file():
        raise FileNotFoundError(f"--existing-pack {folder}: no __init__.py of the pack's freefuse_comfyui there")
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    spec.loader.exec_module(module)
    return sys.modules[NAME + ".nodes"]


def token_positions(text: str, words: tuple[str, ...]) -> dict:
    """`FreeFuseTokenPositions`'s output for `text` with one token per space-separated word: each word's
    index (one list per prompt), and the other words as `__background__`."""
    split = text.split(" ")
    maps = {word: [[split.index(word)]] for word in words}
    maps["__background__"] = [[i for i, piece in enumerate(split) if piece not in words]]
    return maps


class Row:
    """The pack's graph for `names` (LoRA files) and `words` (one adapter each), built once; `run(setup)` is
    one generation: phase 1 to the masks, the applicator, the second pass."""

    def __init__(self, pack_nodes, base, names, words, text: str, collect_block: int):
        self.nodes = pack_nodes
        model, data = base, None
        for name, word in zip(names, words):
            model, _, data = pack_nodes.FreeFuseLoRALoader().load_lora(model, None, name, word, 1.0, 0.0, data)
        concepts = [value for word in words for value in (word, word)]
        concepts += ["", ""] * (4 - len(words))
        data = pack_nodes.FreeFuseConceptMap().create_map(*concepts, True, "", data)[0]
        self.data = dict(data, token_pos_maps=token_positions(text, tuple(words)), model_type="flux", prompt=text)
        self.model = model
        self.collect_block = collect_block

    def run(self, setup, sample):
        """One generation; `sample(model, setup)` is the benchmark's KSampler call. The latent has Flux's 16
        channels, as the workflow's EmptySD3LatentImage gives (the pack's phase 1 does not widen a 4-channel
        empty latent, as ComfyUI's samplers do). The pack's phase 1 catches its own errors and returns all-ones
        masks; that is an error here."""
        empty = setup.latent["samples"]
        setup = dataclasses.replace(setup, latent={"samples": empty.new_zeros(empty.shape[0], 16, *empty.shape[2:])})
        settings = dict(SETTINGS, collect_step=min(SETTINGS["collect_step"], setup.steps),
                        collect_block=self.collect_block)
        model, masks, _ = self.nodes.FreeFusePhase1Sampler().collect_masks(
            self.model, setup.positive, setup.negative, setup.latent, self.data, setup.seed, setup.steps,
            settings["collect_step"], setup.cfg, setup.sampler_name, setup.scheduler,
            collect_block=settings["collect_block"], collect_block_end=settings["collect_block"],
            temperature=settings["temperature"], top_k_ratio=settings["top_k_ratio"])
        if all(bool((mask == 1).all()) for mask in masks["masks"].values()):
            raise RuntimeError("row f: the existing pack's phase 1 failed (all-ones masks, its fallback); see its log")
        masked = self.nodes.FreeFuseMaskApplicator().apply_masks(model, masks, self.data, latent=setup.latent,
                                                                 bias_blocks="all")[0]
        return sample(masked, setup), masks
