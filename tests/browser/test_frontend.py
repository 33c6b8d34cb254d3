"""Browser tier: ComfyUI's own frontend in headless Debian Chromium loads every workflow.

Every node type must be registered (a missing type is not drawn red, it is just absent from
LiteGraph.registered_node_types), the pack's extension must have run (it records itself in
window.__freefuse_extensions) and no extension may fail to load (vite:preloadError). A screenshot
of each workflow is kept in artifacts/browser/.
"""
import json
import subprocess
import sys

import pytest
from comfy_host import PACK, find_comfyui
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(PACK / "tools"))
from comfy_server import ComfyServer  # noqa: E402

WORKFLOWS = sorted((PACK / "workflows").glob("*.json"))
ARTIFACTS = PACK / "artifacts" / "browser"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy")
    subprocess.run([sys.executable, str(PACK / "tools" / "make_standins.py"), str(find_comfyui()),
                    str(base / "models"), *map(str, WORKFLOWS)], check=True, capture_output=True)
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors"):  # listed, never loaded here
        (base / "models" / "text_encoders").mkdir(parents=True, exist_ok=True)
        (base / "models" / "text_encoders" / name).write_bytes(b"")
    server = ComfyServer(find_comfyui(), base, standins=False, log=base / "server.log")
    server.post("/settings", {"Comfy.TutorialCompleted": True})
    errors = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        tab = context.new_page()
        tab.on("console", lambda m: errors.append(m.text) if "preloadError" in m.text else None)
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.goto(server.url("/"))
        tab.wait_for_function("window.app && window.app.extensionManager", timeout=120_000)
        tab.wait_for_function("window.__freefuse_extensions !== undefined", timeout=60_000)
        tab.errors = errors
        yield tab
        browser.close()
    server.close()


def test_the_pack_extension_loaded_without_errors(page):
    assert page.evaluate("window.__freefuse_extensions") == ["freefuse.maskLegend"]
    assert not [e for e in page.errors if "preloadError" in e or "freefuse" in e.lower()]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_loads_with_every_node_type(page, path):
    workflow = json.loads(path.read_text())
    page.evaluate("(wf) => window.app.loadGraphData(wf)", workflow)
    missing = page.evaluate(
        "(types) => types.filter(t => !(t in LiteGraph.registered_node_types))",
        sorted({n["type"] for n in workflow["nodes"]}))
    assert missing == []
    assert page.evaluate("window.app.graph._nodes.length") == len(workflow["nodes"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("() => { const c = window.app.canvas; c.ds.scale = 0.6; c.ds.offset = [110, 90];"
                  " c.setDirty(true, true); }")
    page.wait_for_timeout(300)  # one frame for the canvas to redraw before the screenshot
    page.screenshot(path=str(ARTIFACTS / f"{path.stem}.png"))
