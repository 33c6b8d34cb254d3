"""Host tier: the real ComfyUI on the CPU, the pack loaded through ComfyUI's custom-node loader."""
import pytest
from comfy_host import load_pack_in_process

PACK_MODULE = load_pack_in_process()
import folder_paths  # noqa: E402


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
