"""pytest plugin (loaded by `-p tests.collect_pack_root` from pyproject.toml).

The repository root is the pack: its `__init__.py` imports ComfyUI. pytest would import it as a
test package before any test; collecting the root as a plain folder lets `tests/core` run where no
ComfyUI is importable.
"""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path, parent):
    if Path(path).resolve() == ROOT:
        return pytest.Dir.from_parent(parent, path=path)
    return None
