"""The main job: run a workflow from workflows/ headless through ComfyUI; write its images and the mask preview.

    python3 scripts/run_workflow.py [--smoke]                  # the toy world (ships with the pack), CPU, seconds
    python3 scripts/run_workflow.py workflows/freefuse_two_subjects.json [--smoke] [--out DIR]

The default workflow is the toy world: a small Flux trained on striped-ellipse characters and two
character LoRAs, all in the pack, so it needs no download and writes FreeFuse's picture, the same
LoRAs merged, and the masks. FLUX.1 workflows use the ComfyUI host's own models folder
(COMFYUI_PATH, the ComfyUI that contains this pack, or ~/ComfyUI); a missing model file is named
with the folder it belongs in. For them --smoke swaps in tiny stand-in models with random weights
(the picture is noise, the masks are real); the toy world runs for real either way.
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PACK / "tools"), str(PACK / "tests")]
from comfy_host import find_comfyui  # noqa: E402
from comfy_server import ComfyServer  # noqa: E402
from workflow_api import smoke, to_api  # noqa: E402

NEEDS = {"UNETLoader": [(0, "diffusion_models")], "VAELoader": [(0, "vae")],
         "DualCLIPLoader": [(0, "text_encoders"), (1, "text_encoders")], "FreeFuseLoraLoader": [(0, "loras")]}


TOY_LORAS = PACK / "toyworld" / "checkpoints" / "loras"


def missing_files(workflow: dict, models: Path) -> list[tuple[str, str]]:
    missing = []
    for node in workflow["nodes"]:
        for index, folder in NEEDS.get(node["type"], []):
            name = node["widgets_values"][index]
            if not (models / folder / name).is_file() and not (
                    folder == "text_encoders" and (models / "clip" / name).is_file()) and not (
                    folder == "loras" and (TOY_LORAS / name).is_file()):
                missing.append((name, f"models/{folder}"))
    return missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflow", type=Path, nargs="?", default=PACK / "workflows" / "freefuse_toy_world.json",
                        help="a workflow JSON (default: the toy world, which ships with the pack)")
    parser.add_argument("--smoke", action="store_true",
                        help="FLUX.1 workflows: tiny stand-in models (random weights); the toy world: no change")
    parser.add_argument("--out", type=Path, default=Path("output"))
    args = parser.parse_args()
    comfyui = find_comfyui()
    workflow = json.loads(args.workflow.read_text())
    standins = args.smoke and not any(n["type"] == "FreeFuseToyWorldLoader" for n in workflow["nodes"])
    if not standins:
        missing = missing_files(workflow, comfyui / "models")
        if missing:
            for name, folder in missing:
                sys.stderr.write(f"missing: {name}  (put it in {comfyui / folder})\n")
            sys.stderr.write("Run with --smoke to prove the pipeline on built-in tiny stand-in models.\n")
            return 2
    base = Path(tempfile.mkdtemp(prefix="freefuse_"))
    if standins:
        subprocess.run([sys.executable, str(PACK / "tools" / "make_standins.py"), str(comfyui),
                        str(base / "models"), str(args.workflow)], check=True)
        server = ComfyServer(comfyui, base, standins=True, log=base / "server.log")
    else:
        server = ComfyServer(comfyui, base, standins=False, log=base / "server.log",
                             models=comfyui / "models")
    try:
        prompt = to_api(workflow, server.get("/object_info"))
        entry = server.run(smoke(prompt) if standins else prompt, timeout=3600)
    finally:
        server.close()
    if entry["status"]["status_str"] != "success":
        sys.stderr.write(json.dumps(entry["status"]["messages"][-1], indent=1)[:4000] + "\n")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for node_id, output in entry["outputs"].items():
        for image in output.get("images", []):
            folder = "output" if image["type"] == "output" else "temp"
            node = prompt[node_id]
            kind = "preview" if node["class_type"] == "FreeFuseMaskPreview" else node["inputs"].get(
                "filename_prefix", "image")
            target = args.out / f"{args.workflow.stem}_{kind}.png"
            shutil.copy(base / folder / image["subfolder"] / image["filename"], target)
            sys.stdout.write(f"wrote {target}\n")
        for subject in output.get("freefuse_legend", []):
            sys.stdout.write(f"subject {subject['name']}: colour {subject['color']}"
                             f"{' (won no region)' if subject['empty'] else ''}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
