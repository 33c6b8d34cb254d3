"""UI-format (litegraph) workflows to the API format that ComfyUI's /prompt takes.

Widget values map to the node's widget inputs in the order `/object_info` lists them; an INT input
with `control_after_generate` stores one extra value (fixed/randomize) that the API drops. Note
nodes are dropped; links become `[node_id, output_index]`.
"""
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VIRTUAL = {"Note", "MarkdownNote"}


def _widget_inputs(info: dict) -> list[tuple[str, dict]]:
    out = []
    for group in ("required", "optional"):
        for name, spec in info["input"].get(group, {}).items():
            kind = spec[0]
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                out.append((name, spec[1] if len(spec) > 1 else {}))
    return out


def to_api(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL:
            continue
        if node["type"] not in object_info:
            raise ValueError(f"node type {node['type']} is not known to this ComfyUI")
        inputs = {}
        values = list(node.get("widgets_values") or [])
        for name, options in _widget_inputs(object_info[node["type"]]):
            if not values:
                break
            inputs[name] = values.pop(0)
            if options.get("control_after_generate") and values:
                values.pop(0)
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                link = links[socket["link"]]
                inputs[socket["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def smoke(prompt: dict, size: int = 64, steps: int = 4) -> dict:
    """A prompt for tiny stand-in models: the tiny CLIP loader for DualCLIPLoader (ComfyUI cannot
    load a small T5), small images, few steps, a block the 2-block stand-in has."""
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "DualCLIPLoader":
            node["class_type"], node["inputs"] = "FreeFuseTestTinyCLIPLoader", {}
        elif kind == "EmptyLatentImage":
            inputs.update(width=size + 32, height=size)
        elif kind == "FreeFuseMaskExtract":
            inputs.update(steps=steps, mask_step=steps // 2, mask_block=1)
    return prompt
