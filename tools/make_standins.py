"""Writes tiny stand-in model files with the names a workflow expects, into a ComfyUI models folder.

    python3 tools/make_standins.py <ComfyUI> <models dir> <workflow.json>...

The diffusion model and the VAE load through the stock UNETLoader and VAELoader; every LoRA named
by a FreeFuse LoRA Loader gets a random kohya-format file. The text encoders have no stand-in file:
ComfyUI fixes T5's size, so `tools/standin_nodes` provides a tiny-CLIP loader that replaces
DualCLIPLoader (see tools/workflow_api.py). Random weights: they prove the pipeline, not the picture.
"""
import asyncio
import importlib
import json
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]


def main(comfyui: str, models: str, workflows: list[str]) -> None:
    sys.path.insert(0, comfyui)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing(True)
    from safetensors.torch import save_file

    import nodes

    asyncio.run(nodes.load_custom_node(str(PACK)))
    standin = importlib.import_module(str(PACK).replace(".", "_x_") + ".freefuse_comfy.standin")
    root = Path(models)
    for folder in ("diffusion_models", "vae", "loras"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    flux_sd = standin.tiny_flux_state_dict()
    model = standin.tiny_flux()
    for path in workflows:
        for node in json.loads(Path(path).read_text())["nodes"]:
            values = node.get("widgets_values") or []
            if node["type"] == "UNETLoader":
                save_file(flux_sd, str(root / "diffusion_models" / values[0]))
            elif node["type"] == "VAELoader":
                save_file(standin.tiny_vae_state_dict(), str(root / "vae" / values[0]))
            elif node["type"] == "FreeFuseLoraLoader":
                seed = sum(map(ord, values[0]))
                save_file(standin.random_lora_state_dict(model, seed=seed), str(root / "loras" / values[0]))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
