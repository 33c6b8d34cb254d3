"""Server tier: the real ComfyUI server runs every workflow in workflows/ on tiny stand-in models.

What is changed for the CPU and why (tools/workflow_api.smoke): DualCLIPLoader is replaced by the
test-only FreeFuseTestTinyCLIPLoader (tools/standin_nodes), because ComfyUI fixes T5's size and the
stock loader cannot load a small stand-in; images are 96 x 64 px, 4 steps, mask at step 2 in
block 1 of the 2-block stand-in. UNETLoader, VAELoader and the FreeFuse LoRA Loaders load stand-in
files through the stock code paths.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TOY, WORKFLOWS, saved_image
from PIL import Image
from workflow_api import smoke, to_api


def test_there_are_workflows():
    assert len(WORKFLOWS) >= 3 and len(TOY) == 1


def test_toy_world_workflow_runs_for_real(server):
    workflow = json.loads(TOY[0].read_text())
    prompt = to_api(workflow, server.get("/object_info"))
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    saved = {prompt[i]["inputs"]["filename_prefix"]: o["images"][0] for i, o in entry["outputs"].items()
             if prompt[i]["class_type"] == "SaveImage"}
    assert set(saved) == {"FreeFuse", "merged"}
    images = {k: Image.open(server.base / "output" / v["subfolder"] / v["filename"]) for k, v in saved.items()}
    assert all(image.size == (256, 256) for image in images.values())
    assert not np.array_equal(np.asarray(images["FreeFuse"]), np.asarray(images["merged"]))
    preview = next(o for i, o in entry["outputs"].items() if prompt[i]["class_type"] == "FreeFuseMaskPreview")
    assert [s["name"] for s in preview["freefuse_legend"]] == ["toy_nexwen", "toy_paxzor"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_runs_on_the_real_server(server, path):
    workflow = json.loads(path.read_text())
    prompt = smoke(to_api(workflow, server.get("/object_info")))
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    outputs = entry["outputs"]
    assert saved_image(server, prompt, entry).size == (96, 64)
    preview = next(o for i, o in outputs.items() if prompt[i]["class_type"] == "FreeFuseMaskPreview")
    subjects = [n for n in workflow["nodes"] if n["type"] == "FreeFuseLoraLoader" and n["widgets_values"][2]]
    assert [entry["name"] for entry in preview["freefuse_legend"]] == \
        [Path(n["widgets_values"][0]).stem for n in subjects]
    shown = Image.open(server.base / "temp" / preview["images"][0]["subfolder"] / preview["images"][0]["filename"])
    assert shown.size == (96, 64)
    colours = {tuple(c) for c in np.asarray(shown.convert("RGB")).reshape(-1, 3)[::7]}
    assert len(colours) > 1
