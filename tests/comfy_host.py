"""Where the ComfyUI host of the host, server and browser tiers is.

`COMFYUI_PATH`, else the ComfyUI that contains this pack (`<ComfyUI>/custom_nodes/<pack>`), else
`~/ComfyUI`. Without one those tiers fail with a message that says how to provide it.
"""
import os
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]
TESTED_VERSION = "0.33.0"


def find_comfyui() -> Path:
    candidates = []
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(Path(os.environ["COMFYUI_PATH"]).expanduser())
    if PACK.parent.name == "custom_nodes":
        candidates.append(PACK.parent.parent)
    candidates.append(Path.home() / "ComfyUI")
    for path in candidates:
        if (path / "comfy").is_dir() and (path / "main.py").is_file():
            return path.resolve()
    raise RuntimeError(
        "No ComfyUI host found (looked in: " + ", ".join(map(str, candidates)) + "). The host, server "
        f"and browser test tiers need a ComfyUI source tree (tested: {TESTED_VERSION}): set COMFYUI_PATH "
        "to it, or clone this pack into <ComfyUI>/custom_nodes, or put ComfyUI at ~/ComfyUI, and install "
        "its requirements.txt.")


def load_pack_in_process():
    """ComfyUI on the CPU in this process, the pack loaded through its custom-node loader (once)."""
    import asyncio
    import sys

    name = str(PACK).replace(".", "_x_")
    if name in sys.modules:
        return sys.modules[name]
    comfyui = find_comfyui()
    sys.path.insert(0, str(comfyui))
    sys.argv = [sys.argv[0]]
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.disable_api_nodes = True
    import nodes

    assert asyncio.run(nodes.load_custom_node(str(PACK))), "ComfyUI failed to load the pack"
    asyncio.run(nodes.load_custom_node(str(comfyui / "comfy_extras" / "nodes_flux.py"), module_parent="comfy_extras"))
    return sys.modules[name]
