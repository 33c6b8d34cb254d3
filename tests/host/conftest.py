"""Host tier: the real ComfyUI on the CPU, the pack loaded through ComfyUI's custom-node loader."""
import asyncio
import sys

import pytest
from comfy_host import PACK, find_comfyui

COMFYUI = find_comfyui()
sys.path.insert(0, str(COMFYUI))
sys.argv = [sys.argv[0]]

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing(False)
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
comfy.cli_args.args.disable_api_nodes = True

import folder_paths  # noqa: E402

import nodes  # noqa: E402


def _load_pack():
    name = str(PACK).replace(".", "_x_")
    if name not in sys.modules:
        assert asyncio.run(nodes.load_custom_node(str(PACK))), "ComfyUI failed to load the pack"
    return sys.modules[name]


PACK_MODULE = _load_pack()
asyncio.run(nodes.load_custom_node(str(COMFYUI / "comfy_extras" / "nodes_flux.py"), module_parent="comfy_extras"))


@pytest.fixture(scope="session")
def pack():
    return PACK_MODULE


@pytest.fixture()
def lora_dir(tmp_path, monkeypatch):
    """A fresh models/loras folder for one test."""
    extensions = {".safetensors", ".pt", ".ckpt"}
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(tmp_path)], extensions))
    folder_paths.filename_list_cache.pop("loras", None)
    yield tmp_path
    folder_paths.filename_list_cache.pop("loras", None)
