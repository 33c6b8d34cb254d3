"""Starts ComfyUI in-process (CPU or CUDA) and loads this pack through its custom-node loader.

Shared by the toy world's scripts: `pack, toy, world = boot("cuda")`.
"""
from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]


def boot(device: str):
    """(pack module, its freefuse_comfy.toy, its toyworld.world), ComfyUI on `device`."""
    sys.path.insert(0, str(PACK / "tests"))
    from comfy_host import find_comfyui

    sys.path.insert(0, str(find_comfyui()))
    # torch's attention on the CPU too, as ComfyUI picks on NVIDIA: its CPU default (sub-quadratic
    # attention) writes `exp(out=...)` and has no backward pass, so training would fail there.
    sys.argv = [sys.argv[0]] + (["--cpu", "--use-pytorch-cross-attention"] if device == "cpu" else [])
    import comfy.options

    comfy.options.enable_args_parsing(True)
    import comfy.cli_args  # noqa: F401

    import nodes

    name = str(PACK).replace(".", "_x_")
    if name not in sys.modules:
        asyncio.run(nodes.load_custom_node(str(PACK)))
    pack = sys.modules[name]
    return (pack, importlib.import_module(pack.__name__ + ".freefuse_comfy.toy"),
            importlib.import_module(pack.__name__ + ".toyworld.world"))
