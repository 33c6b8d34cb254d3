"""freefuse_core never imports ComfyUI."""
import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "freefuse_core"


def test_no_module_of_the_core_imports_comfyui():
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.split(".")[0].startswith(("comfy", "folder_paths", "nodes")), f"{path.name}: {name}"


def test_core_imports_with_comfyui_unimportable():
    code = ("import sys\n"
            "for name in ('comfy', 'comfy_api', 'comfy_extras', 'folder_paths', 'nodes'):\n"
            "    sys.modules[name] = None  # poisoned: importing it raises ImportError\n"
            "try:\n"
            "    import comfy\n"
            "    raise SystemExit('the poisoning did not work')\n"
            "except ImportError:\n"
            "    pass\n"
            "import freefuse_core\n"
            "print(len(freefuse_core.__all__))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=CORE.parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 10
