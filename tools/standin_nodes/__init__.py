"""Test and smoke-run only: a loader that returns the pack's tiny Flux CLIP stand-in.

The stock DualCLIPLoader cannot load a small T5 (ComfyUI fixes its configuration), so the server
tier and the main job's --smoke mode replace DualCLIPLoader by this node. Never part of the pack.
"""
import importlib
import sys


def _standin():
    pack = next(name for name, module in list(sys.modules.items())
                if "FreeFuseExtension" in getattr(module, "__dict__", {}))
    return importlib.import_module(pack + ".freefuse_comfy.standin")


class FreeFuseTestTinyCLIPLoader:
    CATEGORY = "testing"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        return (_standin().tiny_clip(),)


NODE_CLASS_MAPPINGS = {"FreeFuseTestTinyCLIPLoader": FreeFuseTestTinyCLIPLoader}
