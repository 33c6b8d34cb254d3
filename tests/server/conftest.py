"""The real ComfyUI server for the server tier, with tiny stand-in files for every workflow."""
import subprocess
import sys

import pytest
from comfy_host import PACK, find_comfyui
from PIL import Image

sys.path.insert(0, str(PACK / "tools"))
from comfy_server import ComfyServer  # noqa: E402

ALL = sorted((PACK / "workflows").glob("*.json"))
TOY = [p for p in ALL if "FreeFuseToyWorldLoader" in p.read_text()]   # ships its models: no stand-ins
WORKFLOWS = [p for p in ALL if p not in TOY]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    comfyui = find_comfyui()
    base = tmp_path_factory.mktemp("comfy")
    subprocess.run([sys.executable, str(PACK / "tools" / "make_standins.py"), str(comfyui), str(base / "models"),
                    *map(str, WORKFLOWS)], check=True, capture_output=True)
    running = ComfyServer(comfyui, base, standins=True, log=base / "server.log")
    yield running
    running.close()


def saved_image(server, prompt: dict, entry: dict) -> Image.Image:
    """The image that the prompt's SaveImage node wrote."""
    saved = next(o for i, o in entry["outputs"].items() if prompt[i]["class_type"] == "SaveImage")["images"]
    return Image.open(server.base / "output" / saved[0]["subfolder"] / saved[0]["filename"])
