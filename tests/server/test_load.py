"""Load: 20 prompts queued at once on the real server, alternating LoRA pairs, prompts and sizes;
every output must equal the output of the same prompt run on its own (issue 6)."""
import copy
import json

import numpy as np
from conftest import WORKFLOWS, saved_image
from workflow_api import smoke, to_api

MAIN = next(p for p in WORKFLOWS if p.stem == "freefuse_two_subjects")


def variant(base: dict, pair: int, prompt: int, wide: bool) -> dict:
    out = copy.deepcopy(base)
    loras = [i for i, n in out.items() if n["class_type"] == "FreeFuseLoraLoader"]
    names = [("character_a.safetensors", "character_b.safetensors"),
             ("character_b.safetensors", "character_a.safetensors")][pair]
    for node_id, name in zip(loras, names):
        out[node_id]["inputs"]["lora_name"] = name
    for node in out.values():
        if node["class_type"] == "FreeFuseTextEncode":
            node["inputs"]["text"] = ["a photo of Alice and Bob in a park", "Bob greets Alice at the beach"][prompt]
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"]["width"] = 96 if wide else 64
    return out


def pixels(server, prompt, entry):
    return np.asarray(saved_image(server, prompt, entry))


def test_twenty_queued_prompts_match_their_lone_runs(server):
    base = smoke(to_api(json.loads(MAIN.read_text()), server.get("/object_info")))
    variants = [variant(base, pair, text, wide) for pair, text, wide in
                [(0, 0, True), (1, 1, False), (0, 1, False), (1, 0, True)]]
    alone = [pixels(server, v, server.run(v)) for v in variants]
    queued = [(i % 4, server.post("/prompt", {"prompt": variants[i % 4]})["prompt_id"]) for i in range(20)]
    for index, prompt_id in queued:
        entry = server.wait(prompt_id)
        assert entry["status"]["status_str"] == "success"
        assert np.array_equal(pixels(server, variants[index], entry), alone[index]), f"prompt {prompt_id}"
    assert len({a.tobytes() for a in alone}) == 4  # the variants differ, so a mix-up would show
