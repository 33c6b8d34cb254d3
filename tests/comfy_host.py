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
