"""The nodes in the real ComfyUI host (CPU, tiny Flux-architecture models built by ComfyUI)."""
import sys
import threading
from dataclasses import replace

import comfy.model_management
import pytest
import torch
from fixtures import lora_state_dict, write_lora
from graph import PROMPT, empty_latent, make_world, masks_set_to, module, stock_lora, stock_sample
from safetensors.torch import save_file

import nodes

NODE_IDS = ("FreeFuseLoraLoader", "FreeFuseTextEncode", "FreeFuseMaskExtract", "FreeFuseMaskedSampler",
            "FreeFuseMaskPreview")
TOL = dict(atol=2e-5, rtol=1e-4)
POOLED = ("_mod_lin.", "_modulation_lin.", "time_in_", "vector_in_", "guidance_in_", "adaLN_modulation")  # kohya


@pytest.fixture(scope="module")
def world(pack):
    return make_world(pack)


@pytest.fixture()
def two_loras(world, lora_dir):
    a = write_lora(lora_dir, "alice.safetensors", world.model, "kohya", rank=4, seed=1, alpha=2.0)
    b = write_lora(lora_dir, "bob.safetensors", world.model, "diffusers", rank=8, seed=2)
    return a, b


def base_weights(model):
    """The base weights, taken with no model loaded (the stock LoRA loader merges into loaded weights)."""
    comfy.model_management.unload_all_models()
    return {k: v.clone() for k, v in model.model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "base weights changed"


def layer_io(layer, run) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and output of `layer`'s first call while `run()` samples."""
    seen = {}

    def hook(module, inputs, output):
        seen.setdefault("x", inputs[0].detach().clone())
        seen.setdefault("y", output.detach().clone())

    handle = layer.register_forward_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return seen["x"], seen["y"]


def with_lora_terms(x, layer, loras, path: str, factors) -> torch.Tensor:
    """`x W^T + b + sum_l factors[l] (x A_l^T) B_l^T` over every LoRA's parts at `path`, computed densely."""
    expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
    for column, lora in enumerate(loras):
        for part in (p for p in lora.parts if p.module == path):
            delta = (x @ part.down.T) @ part.up.T
            expected[..., part.out_start:part.out_start + part.up.shape[0]] += factors[column] * delta
    return expected


def test_pack_registers_its_nodes_through_comfyui_loader(pack):
    for node_id in NODE_IDS:
        assert node_id in nodes.NODE_CLASS_MAPPINGS, node_id


def test_loader_without_masks_equals_stock_lora_loader(world, two_loras):
    a, b = two_loras
    masks = world.extract(world.loras((a, "Alice"), (b, "Bob")))
    ours = stock_sample(world.loras((a, "Alice"), (b, "Bob")), world.encode(), empty_latent(64, 64), masks.setup)
    stock = stock_sample(stock_lora(stock_lora(world.model, a), b), world.encode(), empty_latent(64, 64), masks.setup)
    torch.testing.assert_close(ours, stock, **TOL)


def test_all_ones_masks_equal_stock_loras_and_zero_mask_removes_a_lora(world, two_loras):
    a, b = two_loras
    before = base_weights(world.model)
    model = world.loras((a, "Alice"), (b, "Bob"))
    masks = world.extract(model)
    assert masks.subjects == ("alice", "bob")
    setup = masks.setup
    stock_both = stock_sample(stock_lora(stock_lora(world.model, a), b), setup.positive, setup.latent, setup)
    stock_bob = stock_sample(stock_lora(world.model, b), setup.positive, setup.latent, setup)
    assert not torch.allclose(stock_both, stock_bob, atol=1e-3), "the LoRA must matter for this test"
    torch.testing.assert_close(world.masked(masks_set_to(masks, torch.ones(2))), stock_both, **TOL)
    torch.testing.assert_close(world.masked(masks_set_to(masks, torch.tensor([0.0, 1.0]))), stock_bob, **TOL)
    assert_unchanged(world.model, before)


def test_modulation_drop_equals_the_lora_without_its_modulation_layers(world, lora_dir):
    sd = lora_state_dict(world.model, "kohya", rank=4, seed=3)
    modulation = [k for k in sd if any(p in k for p in POOLED)]
    assert modulation and len(modulation) < len(sd)
    save_file(sd, str(lora_dir / "alice.safetensors"))
    save_file({k: v for k, v in sd.items() if k not in modulation}, str(lora_dir / "alice_nomod.safetensors"))
    masks = masks_set_to(world.extract(world.loras(("alice.safetensors", "Alice"))), torch.ones(1))
    setup = masks.setup

    def masked(modulation):
        return world.run("FreeFuseMaskedSampler", freefuse_masks=masks, mode="restart",
                         modulation=modulation)[0]["samples"]

    without = stock_sample(stock_lora(world.model, "alice_nomod.safetensors"), setup.positive, setup.latent, setup)
    torch.testing.assert_close(masked("drop"), without, **TOL)
    torch.testing.assert_close(masked("keep"), stock_sample(stock_lora(world.model, "alice.safetensors"),
                                                            setup.positive, setup.latent, setup), **TOL)
    assert not torch.allclose(masked("keep"), without, atol=1e-3), "the modulation terms must matter here"


def test_token_isolation_turns_each_lora_off_on_the_other_subjects_words(world, two_loras):
    a, b = two_loras
    model = world.loras((a, "Alice"), (b, "Bob"))
    masks = world.extract(model)
    alice, bob = masks.subject_tokens
    assert alice and bob and not set(alice) & set(bob)
    layer = model.model.diffusion_model.double_blocks[0].txt_attn.qkv
    x, y = layer_io(layer, lambda: world.run("FreeFuseMaskedSampler", freefuse_masks=masks, mode="restart",
                                             token_isolation=True))
    factors = torch.ones(2, x.shape[1], 1)
    factors[0, list(bob)] = 0       # Alice's LoRA off on Bob's words
    factors[1, list(alice)] = 0     # and Bob's on Alice's
    expected = with_lora_terms(x, layer, model.get_attachment("freefuse_loras"), "double_blocks.0.txt_attn.qkv",
                               factors)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="FreeFuse Masked LoRA Sampler.*token_isolation"):
        world.run("FreeFuseMaskedSampler", freefuse_masks=replace(masks, subject_tokens=()), mode="restart",
                  token_isolation=True)


def test_masks_partition_and_preview_outputs(world, two_loras):
    a, b = two_loras
    masks = world.extract(world.loras((a, "Alice"), (b, "Bob")), latent=empty_latent(96, 64))
    assert masks.token_masks.shape == (1, 4 * 6, 2)
    assert torch.equal(masks.token_masks.sum(-1), torch.ones(1, 24))
    preview, mask_batch, names = world.run("FreeFuseMaskPreview", freefuse_masks=masks, opacity=0.5)
    assert preview.shape == (1, 64, 96, 3)
    assert mask_batch.shape == (2, 64, 96)
    assert torch.equal(mask_batch.sum(0), torch.ones(64, 96))
    assert names.splitlines() == ["alice", "bob"]


class Counter:
    """Counts calls of modules of the diffusion model through forward hooks."""

    def __init__(self, model, *paths):
        self.counts = dict.fromkeys(paths, 0)
        root = model.model.diffusion_model
        self.handles = [root.get_submodule(p).register_forward_hook(self._hook(p)) for p in paths]

    def _hook(self, path):
        def hook(*_):
            self.counts[path] += 1
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("mode, full", [("continue", 0), ("restart", 2)])
def test_model_evaluations_and_one_capture(world, two_loras, monkeypatch, pack, mode, full):
    a, b = two_loras
    steps, k, block = 4, 2, 1
    captures = []
    sampling = module(pack, "freefuse_comfy.sampling")
    real = sampling.subject_maps

    def counting(q, k_, txt_len, grid, sets, **kw):
        captures.append((q.shape, txt_len, grid))
        return real(q, k_, txt_len, grid, sets, **kw)

    monkeypatch.setattr(sampling, "subject_maps", counting)
    model = world.loras((a, "Alice"), (b, "Bob"))
    counter = Counter(model, "double_blocks.0", "double_blocks.1", "single_blocks.0", "final_layer")
    try:
        masks = world.extract(model, steps=steps, mask_step=k, mask_block=block)
        world.masked(masks, mode)
    finally:
        counter.close()
    evaluations = steps + full  # restart re-runs k steps; continue runs steps - k after the extraction's k
    assert counter.counts["final_layer"] == evaluations
    assert counter.counts["double_blocks.0"] == evaluations + 1  # step k of the extraction, stopped in block b
    assert counter.counts["double_blocks.1"] == evaluations      # block b itself stops inside its attention
    assert counter.counts["single_blocks.0"] == evaluations
    assert len(captures) == 1
    assert captures[0][1] == 256 and captures[0][2] == (4, 4)


def test_superpixels_run_in_a_worker_thread_beside_step_k(world, two_loras, monkeypatch, pack):
    sampling = module(pack, "freefuse_comfy.sampling")
    started, seen = threading.Event(), {}
    real_slic, real_capture = sampling.slic_segments, sampling._capture_maps

    def slic(*args, **kwargs):
        seen["slic thread"] = threading.current_thread().name
        seen["switch interval"] = sys.getswitchinterval()
        started.set()
        return real_slic(*args, **kwargs)

    def capture(*args, **kwargs):
        seen["slic began before step k ended"] = started.wait(timeout=60)
        return real_capture(*args, **kwargs)

    monkeypatch.setattr(sampling, "slic_segments", slic)
    monkeypatch.setattr(sampling, "_capture_maps", capture)
    a, b = two_loras
    before = sys.getswitchinterval()
    masks = world.extract(world.loras((a, "Alice"), (b, "Bob")))
    assert seen["slic began before step k ended"]
    assert seen["slic thread"].startswith("freefuse-slic")
    shortened = min(before, module(pack, "freefuse_core.superpixels").SLIC_SWITCH_INTERVAL)
    assert seen["switch interval"] == pytest.approx(shortened)
    assert sys.getswitchinterval() == before
    assert torch.equal(masks.token_masks.sum(-1), torch.ones(1, 16))


def test_the_main_thread_queues_step_k_before_it_waits_for_the_x0_image(world, two_loras, monkeypatch, pack):
    """The x0 image is copied to the host behind steps 0..k-1; only the SLIC thread waits for it before step k."""
    sampling = module(pack, "freefuse_comfy.sampling")
    events = []
    real_result, real_capture = sampling._HostCopy.result, sampling._capture_maps

    def result(self):
        events.append(("image awaited", threading.current_thread() is threading.main_thread()))
        return real_result(self)

    def capture(*args, **kwargs):
        maps = real_capture(*args, **kwargs)
        events.append(("step k queued", True))
        return maps

    monkeypatch.setattr(sampling._HostCopy, "result", result)
    monkeypatch.setattr(sampling, "_capture_maps", capture)
    a, b = two_loras
    masks = world.extract(world.loras((a, "Alice"), (b, "Bob")))
    on_main = [name for name, main in events if main]
    assert on_main[0] == "step k queued" and "image awaited" in on_main
    assert ("image awaited", False) in events    # the SLIC thread's
    assert masks.image.device.type == "cpu" and masks.image.shape[-1] == 3


def test_stage_one_is_one_sampler_call_that_evaluates_step_k_from_its_own_latent(world, two_loras, monkeypatch, pack):
    """Steps 0..k-1 and step k's capture share one sampler call. Its latent is KSamplerAdvanced's to step k
    with the leftover noise, and the capture evaluates that state at sigma_k."""
    sampling = module(pack, "freefuse_comfy.sampling")
    calls, seen = [], {}
    real_sample, real_capture = sampling.comfy_sample.sample, sampling._capture_maps

    def counted(*args, **kwargs):
        calls.append(kwargs.get("last_step"))
        return real_sample(*args, **kwargs)

    def capture(denoiser, capture, x, sigma, *args):
        seen["x"], seen["sigma"] = x.clone(), float(sigma)
        return real_capture(denoiser, capture, x, sigma, *args)

    monkeypatch.setattr(sampling.comfy_sample, "sample", counted)
    monkeypatch.setattr(sampling, "_capture_maps", capture)
    a, b = two_loras
    model = world.loras((a, "Alice"), (b, "Bob"))
    masks = world.extract(model, steps=4, mask_step=2)
    assert calls == [2]
    positive = world.encode()
    with torch.inference_mode():
        reference = nodes.KSamplerAdvanced().sample(model, "enable", 0, 4, 1.0, "euler", "simple", positive, positive,
                                                    empty_latent(64, 64), 0, 2, "enable")[0]["samples"]
    torch.testing.assert_close(masks.latent_at_step["samples"], reference, atol=0, rtol=0)
    sigma_k = float(sampling.sigmas_of(masks.setup)[2])
    assert seen["sigma"] == pytest.approx(sigma_k)
    state = (1 - sigma_k) * model.model.process_latent_in(reference)
    torch.testing.assert_close(seen["x"].cpu(), state, atol=1e-6, rtol=1e-5)


def test_masked_forwards_are_built_once_per_model_not_at_every_inject(world, two_loras, monkeypatch):
    injection = module(world.pack, "freefuse_comfy.injection")
    built, ejects = [], []
    real_build, real_eject = injection._masked_forward, injection.LoraInjection.eject
    monkeypatch.setattr(injection, "_masked_forward", lambda *a, **k: built.append(a) or real_build(*a, **k))
    monkeypatch.setattr(injection.LoraInjection, "eject", lambda self, p: ejects.append(p) or real_eject(self, p))
    a, b = two_loras
    model = world.loras((a, "Alice"), (b, "Bob"))
    layers = len(model.get_injections(injection.INJECTION_KEY)[0].inject.__self__.layers)
    first = world.masked(world.extract(model))
    assert len(built) == layers and len(ejects) > 1
    torch.testing.assert_close(world.masked(world.extract(model)), first, atol=0, rtol=0)
    assert len(built) == layers


def test_text_rows_skip_the_mask_multiply_when_every_subject_has_a_region(pack):
    masked = module(pack, "freefuse_comfy.masked")
    image = torch.zeros(1, 16, 2)
    image[0, :8, 0], image[0, 8:, 1] = 1, 1
    x = torch.zeros(1, 16, 8, 8)
    call = masked.MaskPlan(image, (4, 4)).for_call(x, txt_len=5, chunks=1)
    assert call.text is None and call.pooled is None
    assert torch.equal(call.joint[0, :5], torch.ones(5, 2)) and torch.equal(call.joint[0, 5:], image[0])
    image[0, 8:, 1], image[0, 8:, 0] = 0, 1   # Bob owns nothing: his text rows are 0, so they stay masked
    call = masked.MaskPlan(image, (4, 4)).for_call(x, txt_len=5, chunks=1)
    assert torch.equal(call.text[0], torch.tensor([[1.0, 0.0]] * 5))
    isolated = masked.MaskPlan(torch.ones(1, 16, 2), (4, 4), text_off={0: (1,)}).for_call(x, txt_len=5, chunks=1)
    assert isolated.text is not None and isolated.text[0, 1, 0] == 0


def test_masks_reach_the_layer_as_per_token_factors(world, two_loras):
    a, b = two_loras
    model = world.loras((a, "Alice"), (b, "Bob"))
    masks = world.extract(model)
    planted = torch.zeros(1, 16, 2)
    planted[0, :8, 0] = 1          # Alice owns the top half of the token grid
    planted[0, 8:, 1] = 1          # Bob the bottom half
    masks = masks_set_to(masks, planted)
    layer = model.model.diffusion_model.double_blocks[0].img_attn.qkv
    x, y = layer_io(layer, lambda: world.masked(masks))
    expected = with_lora_terms(x, layer, model.get_attachment("freefuse_loras"), "double_blocks.0.img_attn.qkv",
                               planted.movedim(-1, 0).unsqueeze(-1))
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)


def test_no_leak_between_runs_resolutions_prompts_and_branches(world, two_loras):
    a, b = two_loras
    before = base_weights(world.model)
    model = world.loras((a, "Alice"), (b, "Bob"))
    first = world.masked(world.extract(model))
    again = world.masked(world.extract(model))
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    world.masked(world.extract(model, latent=empty_latent(96, 64)))
    world.masked(world.extract(model, positive=world.encode("Bob and Alice at the beach")))
    torch.testing.assert_close(world.masked(world.extract(model)), first, atol=0, rtol=0)
    branch = world.loras((a, "Alice"), (b, "Bob"))
    zero_alice = masks_set_to(world.extract(branch), torch.tensor([0.0, 1.0]))
    world.masked(zero_alice)
    torch.testing.assert_close(world.masked(world.extract(model)), first, atol=0, rtol=0)
    assert model.get_attachment("freefuse_loras") is not branch.get_attachment("freefuse_loras")
    assert_unchanged(world.model, before)


@pytest.mark.parametrize("settings", [
    dict(cfg=4.0), dict(latent=empty_latent(64, 64, batch=2)), dict(latent=empty_latent(1000, 600)),
    dict(loras_before_mask="off"), dict(x0_image="latent rgb"), dict(denoise=0.8),
], ids=["cfg4", "batch2", "1000x600", "loras-off-before-k", "latent-rgb", "denoise0.8"])
def test_end_to_end_settings(world, two_loras, settings, pack):
    a, b = two_loras
    model = world.loras((a, "Alice"), (b, "Bob"))
    latent = settings.pop("latent", empty_latent(64, 64))
    masks = world.extract(model, latent=latent, steps=3, mask_step=1, **settings)
    batch, _, h, w = latent["samples"].shape
    assert masks.token_masks.shape == (batch, ((h + 1) // 2) * ((w + 1) // 2), 2)
    assert masks.owner.shape == masks.image.shape[:3]
    core = module(pack, "freefuse_core")
    full = [core.resize_owner(owner, (h * 8, w * 8)) for owner in masks.owner]   # the votes at full size
    assert torch.equal(masks.token_masks, torch.stack([core.owner_to_token_masks(o, 2, masks.grid) for o in full]))
    assert masks.pixel_masks.shape == (batch, 2, h * 8, w * 8)
    assert torch.equal(masks.pixel_masks.argmax(1), torch.stack(full))
    for mode in ("restart", "continue"):
        out = world.masked(masks, mode)
        assert out.shape == (batch, 16, h, w) and torch.isfinite(out).all()


def test_a_noise_mask_keeps_the_region_it_freezes_as_a_stock_ksampler_does(world, two_loras):
    """An inpainting latent: stage 1 (the capture's evaluation included) and both stage-2 modes sample with
    the noise mask, so where it is 0 the output is a stock KSampler's (the input latent, kept)."""
    a, b = two_loras
    model = world.loras((a, "Alice"), (b, "Bob"))
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1                               # resample the left half only
    latent = nodes.SetLatentNoiseMask().set_mask(empty_latent(64, 64), mask)[0]
    masks = world.extract(model, latent=latent, steps=3, mask_step=1)
    assert torch.equal(masks.token_masks.sum(-1), torch.ones(1, 16))
    stock = stock_sample(model, world.encode(), latent, masks.setup)
    for mode in ("restart", "continue"):
        out = world.masked(masks, mode)
        torch.testing.assert_close(out[..., 5:], stock[..., 5:], atol=1e-6, rtol=1e-6)   # latent columns 5..7
        assert (out[..., :3] - stock[..., :3]).abs().max() > 1e-3                     # the resampled side differs


def test_fp8_weights_end_to_end(pack, lora_dir):
    fp8 = make_world(pack)
    fp8.model = module(pack, "freefuse_comfy.host").comfy_sd.load_diffusion_model_state_dict(
        module(pack, "freefuse_comfy.standin").tiny_flux_state_dict(), model_options={"dtype": torch.float8_e4m3fn})
    a = write_lora(lora_dir, "alice.safetensors", fp8.model, "kohya", seed=1)
    b = write_lora(lora_dir, "bob.safetensors", fp8.model, "diffusers", seed=2)
    masks = fp8.extract(fp8.loras((a, "Alice"), (b, "Bob")))
    out = fp8.masked(masks)
    assert torch.isfinite(out).all()


def test_prompt_typed_once_reaches_extract_through_conditioning_nodes(world, two_loras):
    a, b = two_loras
    guided = nodes.NODE_CLASS_MAPPINGS["FluxGuidance"].execute(conditioning=world.encode(PROMPT), guidance=3.5)[0]
    assert guided[0][1]["guidance"] == 3.5
    masks = world.extract(world.loras((a, "Alice"), (b, "Bob")), positive=guided)
    assert masks.subjects == ("alice", "bob")


def test_stock_sampling_of_the_base_model_is_unaffected_after_freefuse(world, two_loras):
    a, b = two_loras
    masks = world.extract(world.loras((a, "Alice"), (b, "Bob")))
    comfy.model_management.unload_all_models()
    fresh = stock_sample(world.model, masks.setup.positive, masks.setup.latent, masks.setup)
    world.masked(masks)
    after = stock_sample(world.model, masks.setup.positive, masks.setup.latent, masks.setup)
    torch.testing.assert_close(after, fresh, atol=0, rtol=0)


def test_prefetched_lora_terms_give_the_same_samples_and_leave_nothing_on_the_device(world, two_loras, monkeypatch):
    """The CUDA path (terms in host buffers, copied into a ring of `window + 1` device buffers a few
    blocks ahead) forced onto the CPU: the same samples as resident terms, every layer fetched from
    a ring buffer of that size, and no ring left once the model is unloaded."""
    injection = module(world.pack, "freefuse_comfy.injection")
    a, b = two_loras
    model = world.loras((a, "Alice"), (b, "Bob"))
    masks = world.extract(model)
    resident = world.masked(masks)
    comfy.model_management.unload_all_models()
    monkeypatch.setattr(injection, "STAGED_DEVICES", frozenset({"cpu"}))
    prefetcher = model.get_injections(injection.INJECTION_KEY)[0].inject.__self__.prefetcher
    rings, fetch = [], prefetcher.fetch

    def recorded(*args):
        lowrank = fetch(*args)
        rings.append(len(prefetcher.rings[args[1:]].buffers))
        return lowrank

    monkeypatch.setattr(prefetcher, "fetch", recorded)
    staged = world.masked(world.extract(model))
    assert len(rings) > len(prefetcher.order) > 1, "the layers were not fetched through the prefetcher"
    assert set(rings) == {prefetcher.window + 1}
    torch.testing.assert_close(staged, resident, atol=0, rtol=0)
    comfy.model_management.unload_all_models()
    assert not prefetcher.rings


def test_prefetch_rings_stay_across_sampler_calls_until_the_model_is_unloaded_or_another_lora_set_loads(
        world, two_loras, monkeypatch):
    """ComfyUI detaches and ejects a model at every sampler call that loads it: the ring (its buffers and
    views) is the same object through the extraction's two calls and the masked pass, is gone after a
    full unload, and goes when a model of another LoRA set is injected."""
    injection = module(world.pack, "freefuse_comfy.injection")
    monkeypatch.setattr(injection, "STAGED_DEVICES", frozenset({"cpu"}))
    a, b = two_loras
    model = world.loras((a, "Alice"), (b, "Bob"))
    prefetcher = model.get_injections(injection.INJECTION_KEY)[0].inject.__self__.prefetcher
    rings, fetch = set(), prefetcher.fetch

    def recorded(*args):
        lowrank = fetch(*args)
        rings.add(id(prefetcher.rings[args[1:]]))
        return lowrank

    monkeypatch.setattr(prefetcher, "fetch", recorded)
    world.masked(world.extract(model))
    assert len(rings) == 1
    assert prefetcher.rings
    comfy.model_management.unload_all_models()
    assert not prefetcher.rings
    world.extract(model)
    assert prefetcher.rings
    other = world.loras((b, "Bob"), (a, "Alice"))
    world.extract(other)
    assert not prefetcher.rings
    comfy.model_management.unload_all_models()


def test_a_replacement_of_the_capture_block_still_runs_in_the_steps_before_k(world, two_loras):
    """Stage 1 samples one clone with block b replaced by the capture; before step k the capture passes
    through to the replacement another node had put there, once per evaluation (steps 0..k-1)."""
    a, b = two_loras
    model = world.loras((a, "Alice"), (b, "Bob")).clone()
    calls = []

    def counted(args, extra):
        calls.append(float(args["transformer_options"]["sigmas"].flatten()[0]))
        return extra["original_block"](args)

    model.set_model_patch_replace(counted, "dit", "double_block", 1)
    masks = world.extract(model, mask_step=2, mask_block=1)
    assert len(calls) == 2 and calls[0] > calls[1]
    assert torch.equal(masks.token_masks.sum(-1), torch.ones(1, 16))


def test_held_terms_join_the_gelu_and_qk_norm_after_their_layer_with_the_same_samples(world, two_loras, monkeypatch):
    """The path that adds LoRA terms inside the op that reads the layer's output next (CUDA with Triton)
    forced onto the CPU: the GELU after every double-block MLP-in layer, and where a LoRA has terms on
    exactly those columns (diffusers `proj_mlp`, `to_q`, `to_k`), the GELU after `linear1`'s MLP columns and
    the q/k norms after `qkv` and `linear1`. The samples equal adding the terms in the layer (the same
    layout, the path off at run time), and every consumer gets its own forward back."""
    injection = module(world.pack, "freefuse_comfy.injection")
    a, b = two_loras
    monkeypatch.setattr(injection, "FUSED_DEVICES", frozenset({"cpu"}))   # when loading: held columns kept apart
    model = world.loras((a, "Alice"), (b, "Bob"))
    monkeypatch.setattr(injection, "FUSED_DEVICES", frozenset())
    masks = world.extract(model)
    in_layer = world.masked(masks)
    comfy.model_management.unload_all_models()
    monkeypatch.setattr(injection, "FUSED_DEVICES", frozenset({"cpu"}))
    calls = {"up_gelu": [], "up_rms_norm": []}
    for name, seen in calls.items():
        real = getattr(injection, name)
        monkeypatch.setattr(injection, name, lambda *a, real=real, seen=seen: seen.append(a[0].shape) or real(*a))
    masks = world.extract(model)
    for seen in calls.values():
        seen.clear()   # the extraction's step k stops inside a double block: count whole evaluations only
    fused = world.masked(masks)
    flux = model.model.diffusion_model
    layers = 2 * len(flux.double_blocks) + len(flux.single_blocks)   # img, txt streams; single blocks
    evaluations = len(calls["up_gelu"]) // layers
    assert evaluations > 0 and len(calls["up_gelu"]) == evaluations * layers
    assert len(calls["up_rms_norm"]) == 2 * evaluations * layers      # q and k
    image, text = calls["up_gelu"][0][-2], calls["up_gelu"][1][-2]
    assert {shape[-2] for shape in calls["up_gelu"]} == {image, text, image + text}
    assert {shape[-1] for shape in calls["up_rms_norm"]} == {flux.single_blocks[0].hidden_size // flux.params.num_heads}
    torch.testing.assert_close(fused, in_layer, **TOL)
    comfy.model_management.unload_all_models()
    consumers = [m for m in flux.modules() if type(m).__name__ in ("GELU", "QKNorm")]
    assert len(consumers) == 2 * layers and not any("forward" in vars(m) for m in consumers)


def test_a_held_term_that_no_consumer_takes_is_an_error(pack):
    """If the op after a layer never runs, or gets another tensor, the held LoRA term would be lost: the
    evaluation fails instead of going on without it."""
    injection = module(pack, "freefuse_comfy.injection")
    y = torch.zeros(2, 3, 8)
    hold = injection._Hold("single_blocks.0.linear1", "gelu", torch.nn.GELU("tanh"), ((4, 8),))
    held = injection._Held(hold, y, ((torch.zeros(6, 2), torch.zeros(4, 2)),))
    with pytest.raises(RuntimeError, match=r"linear1 \(gelu\)'\] were held for the op after them, which never ran"):
        with injection.CallScope(injection.CallMasks()):
            injection.ACTIVE.get().held[hold.consumer] = held
    assert injection.ACTIVE.get() is None
    mlp = y[..., 4:]
    assert held.checked(mlp, 0) is mlp
    with pytest.raises(RuntimeError, match="other than that layer's columns 4..8"):
        held.checked(y[..., 4:].clone(), 0)
    qk = injection._Hold("double_blocks.0.img_attn.qkv", "qk_norm", None, ((0, 4), (4, 8)), heads=2)
    q = y.view(2, 3, 2, 2, 2).permute(2, 0, 3, 1, 4)[0]     # as Flux splits q, k, v: [B, heads, L, D]
    assert injection._Held(qk, y, (None, None)).checked(q, 0) is q
    with pytest.raises(RuntimeError, match="other than that layer's columns 4..8"):
        injection._Held(qk, y, (None, None)).checked(q, 1)


@pytest.mark.parametrize("fused", [False, True], ids=["terms in the layer", "terms in the GELU and q/k norm"])
def test_partial_loading_low_vram_gives_the_same_result(world, two_loras, monkeypatch, fused):
    """Low VRAM: ComfyUI is made to load the model partially (1 MB budget), so most layers cast
    their weights per call (the q/k norms too, whose weights the fused path takes the same way); the
    masked LoRA outputs must be unchanged."""
    import comfy.model_management as mm

    fused_devices = frozenset({"cpu"}) if fused else frozenset()   # unfused: qkv and linear1 packed in one slice
    monkeypatch.setattr(module(world.pack, "freefuse_comfy.injection"), "FUSED_DEVICES", fused_devices)
    a, b = two_loras
    model = world.loras((a, "Alice"), (b, "Bob"))
    masks = world.extract(model)
    full = world.masked(masks)
    mm.unload_all_models()
    real = mm.LoadedModel.model_load
    seen = []

    def partial(self, lowvram_model_memory=0, force_patch_weights=False):
        seen.append(1)
        return real(self, 1024 * 1024, force_patch_weights)

    monkeypatch.setattr(mm.LoadedModel, "model_load", partial)
    low = world.masked(world.extract(model))
    assert seen, "the partial load was not used"
    lowvram_layers = [m for m in model.model.diffusion_model.modules() if getattr(m, "comfy_cast_weights", False)]
    assert lowvram_layers, "no layer was left to cast per call"
    torch.testing.assert_close(low, full, atol=1e-5, rtol=1e-4)
    monkeypatch.undo()
    mm.unload_all_models()


def _loha(model):
    g = torch.Generator().manual_seed(5)
    sd = {}
    for key, path in (("double_blocks_0_img_attn_qkv", "double_blocks.0.img_attn.qkv"),
                      ("single_blocks_1_linear2", "single_blocks.1.linear2")):
        weight = model.model.state_dict()[f"diffusion_model.{path}.weight"]
        for part, shape in (("hada_w1_a", (weight.shape[0], 2)), ("hada_w1_b", (2, weight.shape[1])),
                            ("hada_w2_a", (weight.shape[0], 2)), ("hada_w2_b", (2, weight.shape[1]))):
            sd[f"lora_unet_{key}.{part}"] = torch.randn(*shape, generator=g) * 0.2
        sd[f"lora_unet_{key}.alpha"] = torch.tensor(2.0)
    return sd


@pytest.mark.parametrize("fmt", ["prefixed", "loha", "xlabs"])
def test_more_lora_formats_match_the_stock_loader(world, lora_dir, fmt):
    from fixtures import lora_state_dict
    from safetensors.torch import save_file

    if fmt == "prefixed":
        ours_sd = stock_sd = lora_state_dict(world.model, "prefixed", seed=3)
    elif fmt == "loha":
        ours_sd = stock_sd = _loha(world.model)
    else:  # XLabs names, which ComfyUI does not map; the stock side gets the same tensors in kohya names
        g = torch.Generator().manual_seed(4)
        down, up = torch.randn(4, 256, generator=g) * 0.05, torch.randn(768, 4, generator=g) * 0.05
        ours_sd = {"double_blocks.1.processor.qkv_lora1.down.weight": down,
                   "double_blocks.1.processor.qkv_lora1.up.weight": up}
        stock_sd = {"lora_unet_double_blocks_1_img_attn_qkv.lora_down.weight": down,
                    "lora_unet_double_blocks_1_img_attn_qkv.lora_up.weight": up}
    save_file(ours_sd, str(lora_dir / "ours.safetensors"))
    save_file(stock_sd, str(lora_dir / "stock.safetensors"))
    masks = world.extract(world.loras(("ours.safetensors", "Alice")))
    ours = stock_sample(world.loras(("ours.safetensors", "Alice")), masks.setup.positive, masks.setup.latent,
                        masks.setup)
    stock = stock_sample(stock_lora(world.model, "stock.safetensors"), masks.setup.positive, masks.setup.latent,
                         masks.setup)
    base = stock_sample(world.model, masks.setup.positive, masks.setup.latent, masks.setup)
    assert not torch.allclose(stock, base, atol=1e-4), "the LoRA must matter for this test"
    torch.testing.assert_close(ours, stock, **TOL)
