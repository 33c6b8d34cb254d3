"""Fidelity tier: the toy world shipped with the pack, on the CPU, through the pack's own nodes."""
import importlib

import pytest
from comfy_host import load_pack_in_process

PACK_MODULE = load_pack_in_process()


@pytest.fixture(scope="session")
def pack():
    return PACK_MODULE


@pytest.fixture(scope="session")
def toy(pack):
    return importlib.import_module(pack.__name__ + ".freefuse_comfy.toy")


@pytest.fixture(scope="session")
def world(pack):
    return importlib.import_module(pack.__name__ + ".toyworld.world")
