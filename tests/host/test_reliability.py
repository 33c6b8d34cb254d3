"""Bad input and faults: every error names the node, the input and the fix; nothing is left behind."""
import pickle
import re

import comfy.model_management
import pytest
import torch
from fixtures import write_lora
from graph import empty_latent, make_world, module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

LOADER = "FreeFuse LoRA Loader"
EXTRACT = re.escape("FreeFuse Mask Extract (step/block)")


@pytest.fixture(scope="module")
def world(pack):
    return make_world(pack)


@pytest.fixture()
def loras(world, lora_dir):
    return (write_lora(lora_dir, "alice.safetensors", world.model, "kohya", seed=1),
            write_lora(lora_dir, "bob.safetensors", world.model, "diffusers", seed=2))


def injected_forwards(model):
    return [name for name, m in model.model.diffusion_model.named_modules() if "forward" in m.__dict__]


def assert_clean(world, before):
    """Once ComfyUI unloads the model (as it does before loading another), nothing of ours is left."""
    comfy.model_management.unload_all_models()
    assert injected_forwards(world.model) == []
    after = world.model.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "base weights changed"


def snapshot(world):
    comfy.model_management.unload_all_models()
    return {k: v.clone() for k, v in world.model.model.state_dict().items()}


@pytest.mark.parametrize("words, match", [
    ("Zed", r"Zed.*not.*prompt|not found"),
    ("Alice", r"same token|claim"),
])
def test_activation_word_errors(world, loras, words, match):
    a, b = loras
    model = world.loras((a, "Alice"), (b, words))
    with pytest.raises(ValueError, match=match):
        world.extract(model)


def test_word_present_twice_takes_every_occurrence(world, loras, pack):
    a, b = loras
    masks = world.extract(world.loras((a, "Alice"), (b, "Bob")),
                          positive=world.encode("Alice and Bob; Alice smiles at Bob"))
    assert masks.subjects == ("alice", "bob")


def test_no_subject_lora_is_an_error(world, loras):
    a, _ = loras
    with pytest.raises(ValueError, match=f"{EXTRACT}.*'model'.*activation word"):
        world.extract(world.loras((a, "")))


def test_clip_text_encode_conditioning_is_refused_with_the_fix(world, loras):
    a, b = loras
    import nodes
    plain = nodes.CLIPTextEncode().encode(world.clip, "Alice and Bob")[0]
    with pytest.raises(ValueError, match=f"{EXTRACT}.*'positive'.*FreeFuse Text Encode"):
        world.extract(world.loras((a, "Alice"), (b, "Bob")), positive=plain)


def test_missing_lora_file(world, lora_dir):
    with pytest.raises(ValueError, match=f"{LOADER}.*'lora_name'.*not in the loras folder"):
        world.loras(("nobody.safetensors", "Alice"))


def test_zero_byte_truncated_and_pickle_loras_are_refused(world, lora_dir, loras):
    (lora_dir / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=f"{LOADER}.*'lora_name'.*empty file"):
        world.loras(("empty.safetensors", "Alice"))
    data = (lora_dir / loras[0]).read_bytes()
    (lora_dir / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{LOADER}.*'lora_name'.*not a readable safetensors"):
        world.loras(("cut.safetensors", "Alice"))

    class Bomb:
        def __reduce__(self):
            return (pytest.fail, ("a pickle was loaded",))

    (lora_dir / "old.pt").write_bytes(pickle.dumps({"x": Bomb()}))
    with pytest.raises(ValueError, match=f"{LOADER}.*'lora_name'.*not a .safetensors file"):
        world.loras(("old.pt", "Alice"))


def test_sdxl_lora_on_flux_matches_nothing(world, lora_dir):
    save_file({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 320),
               "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(320, 4)},
              str(lora_dir / "sdxl.safetensors"))
    with pytest.raises(ValueError, match=f"{LOADER}.*no key.*matches"):
        world.loras(("sdxl.safetensors", "Alice"))


def test_lora_for_another_model_size_is_refused_with_the_fix(world, lora_dir, pack):
    wider = module(pack, "freefuse_comfy.standin").tiny_flux(hidden=384)
    write_lora(lora_dir, "wide.safetensors", wider, "kohya", seed=3)
    with pytest.raises(ValueError, match=f"{LOADER}: 'wide.safetensors' does not fit this model.*384.*Use a LoRA"):
        world.loras(("wide.safetensors", "Alice"))


def test_non_flux_model_is_refused_with_what_is_supported(world, loras):
    import comfy.model_patcher

    not_flux = comfy.model_patcher.ModelPatcher(torch.nn.Linear(2, 2), "cpu", "cpu")
    with pytest.raises(ValueError, match=f"{LOADER}.*'model'.*Flux-architecture"):
        world.loras((loras[0], "Alice"), model=not_flux)


@pytest.mark.parametrize("settings, match", [
    (dict(mask_step=4), r"'mask_step' is 4.*less than 'steps' \(4\)"),
    (dict(mask_step=0), r"'mask_step' is 0.*at least 1"),
    (dict(mask_block=2), r"'mask_block' is 2.*2 double blocks"),
])
def test_step_and_block_out_of_range(world, loras, settings, match):
    a, b = loras
    with pytest.raises(ValueError, match=f"{EXTRACT}.*{match}"):
        world.extract(world.loras((a, "Alice"), (b, "Bob")), **settings)


def test_vae_of_other_latents_or_without_weights_is_refused_before_sampling(world, loras, pack, monkeypatch):
    import comfy.sd

    standin, sampling = module(pack, "freefuse_comfy.standin"), module(pack, "freefuse_comfy.sampling")
    four_channel = comfy.sd.VAE(sd=standin._fill(standin.taesd.TAESD(latent_channels=4), 0, scale=0.1))
    sampled = []
    monkeypatch.setattr(sampling, "run_sampler", lambda *args, **kwargs: sampled.append(1))
    a, b = loras
    with pytest.raises(ValueError, match=f"{EXTRACT}.*'vae' decodes 4-channel.*16 channels.*FLUX VAE"):
        world.extract(world.loras((a, "Alice"), (b, "Bob")), vae=four_channel)
    empty = comfy.sd.VAE(sd={"not_a_vae": torch.zeros(1)})   # ComfyUI leaves such a VAE without a network
    with pytest.raises(ValueError, match=f"{EXTRACT}.*'vae' holds no VAE weights.*FLUX VAE"):
        world.extract(world.loras((a, "Alice"), (b, "Bob")), vae=empty)
    assert sampled == []


def test_x0_image_on_the_device_equals_comfyui_vae_decode(world, pack):
    """The x0 image is decoded as VAE.decode does, left on the device for a copy that does not wait."""
    sampling = module(pack, "freefuse_comfy.sampling")
    x0 = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        image = sampling._x0_image(world.model, world.vae, x0, "vae", 256)
        stock = world.vae.decode(world.model.model.process_latent_out(x0.clone()))[..., :3].clamp(0, 1)
        half = sampling._x0_image(world.model, world.vae, x0, "vae", 32)
    assert image.shape == (1, 64, 64, 3) and image.std() > 0.01
    assert torch.equal(image, stock.float())
    assert half.shape == (1, 32, 32, 3)


def test_same_lora_twice_and_one_subject_and_odd_sizes(world, loras):
    a, _ = loras
    masks = world.extract(world.loras((a, "Alice"), (a, "Bob")), latent=empty_latent(72, 40))
    assert masks.token_masks.shape == (1, 3 * 5, 2)
    single = world.extract(world.loras((a, "Alice")))
    assert torch.equal(single.token_masks, torch.ones_like(single.token_masks))
    world.masked(single)


def test_interrupt_during_extract_and_masked_sampler_leaves_nothing(world, loras):
    a, b = loras
    before = snapshot(world)
    model = world.loras((a, "Alice"), (b, "Bob"))
    reference = world.masked(world.extract(model))
    for stage in ("extract", "masked"):
        masks = world.extract(model) if stage == "masked" else None
        comfy.model_management.interrupt_current_processing(True)
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            world.extract(model) if stage == "extract" else world.masked(masks)
        comfy.model_management.interrupt_current_processing(False)
        assert_clean(world, before)
    torch.testing.assert_close(world.masked(world.extract(model)), reference, atol=0, rtol=0)


def test_exception_and_oom_inside_capture_leave_nothing(world, loras, monkeypatch, pack):
    a, b = loras
    before = snapshot(world)
    model = world.loras((a, "Alice"), (b, "Bob"))
    reference = world.masked(world.extract(model))
    sampling = module(pack, "freefuse_comfy.sampling")
    for error in (RuntimeError("boom"), torch.OutOfMemoryError("simulated OOM")):
        def failing(*args, error=error, **kwargs):
            raise error
        monkeypatch.setattr(sampling, "subject_maps", failing)
        with pytest.raises(type(error)):
            world.extract(model)
        monkeypatch.undo()
        assert_clean(world, before)
    torch.testing.assert_close(world.masked(world.extract(model)), reference, atol=0, rtol=0)


def test_masked_sampler_refuses_masks_of_another_size(world, loras):
    a, b = loras
    masks = world.extract(world.loras((a, "Alice"), (b, "Bob")))
    from dataclasses import replace
    wrong = replace(masks, grid=(8, 8))
    with pytest.raises(ValueError, match="FreeFuse Masked LoRA Sampler.*token grid"):
        world.masked(wrong)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.integers(1, 4), step=st.integers(0, 4), block=st.integers(0, 2),
       width=st.sampled_from([40, 64, 72]), height=st.sampled_from([32, 64]), batch=st.integers(1, 2),
       cfg=st.sampled_from([1.0, 2.5]), sampler=st.sampled_from(["euler", "heun", "dpmpp_2m"]),
       words=st.sampled_from([("Alice", "Bob"), ("Alice", ""), ("Alice", "Alice"), ("Zed", "Bob")]),
       mode=st.sampled_from(["restart", "continue"]))
def test_random_settings_give_a_result_or_a_documented_error(world, loras, steps, step, block, width, height,
                                                             batch, cfg, sampler, words, mode):
    before = snapshot(world)
    model = world.loras((loras[0], words[0]), (loras[1], words[1]))
    try:
        masks = world.extract(model, latent=empty_latent(width, height, batch), steps=steps, mask_step=step,
                              mask_block=block, cfg=cfg, sampler_name=sampler)
        out = world.masked(masks, mode)
    except ValueError as error:
        assert str(error).startswith(("FreeFuse Mask Extract (step/block): ", "FreeFuse")), str(error)
    else:
        assert out.shape[0] == batch and torch.isfinite(out).all()
    assert_clean(world, before)


def test_six_subjects_with_a_batch_of_four(world, lora_dir):
    names = ["Ann", "Ben", "Cid", "Dot", "Eve", "Fay"]
    specs = [(write_lora(lora_dir, f"{n}.safetensors", world.model, "kohya", seed=i), n) for i, n in enumerate(names)]
    prompt = world.encode("a group photo of Ann, Ben, Cid, Dot, Eve and Fay on a sofa")
    masks = world.extract(world.loras(*specs), positive=prompt, latent=empty_latent(64, 64, batch=4))
    assert masks.token_masks.shape == (4, 16, 6)
    assert torch.equal(masks.token_masks.sum(-1), torch.ones(4, 16))
    assert torch.isfinite(world.masked(masks)).all()


def test_subject_without_a_region_is_warned_in_log_and_preview(world, loras, caplog, pack):
    a, b = loras
    masks = world.extract(world.loras((a, "Alice"), (b, "Bob")))
    sampling = module(pack, "freefuse_comfy.sampling")
    maps = torch.zeros(1, 2, 16)
    maps[0, 0] = 1.0  # Alice's map wins every superpixel
    segments = sampling._superpixels(masks.image, 1.0, tuple(masks.pixel_masks.shape[-2:]))
    with caplog.at_level("WARNING"):
        voted = sampling._vote([*world.loras((a, "Alice"), (b, "Bob")).get_attachment("freefuse_loras")],
                               masks.subject_tokens, maps, masks.image, segments, 2, 1, masks.setup,
                               masks.latent_at_step)
    assert voted.empty_subjects == ("bob",)
    assert "subject 'bob' won no superpixel" in caplog.text
    legend = world.run("FreeFuseMaskPreview", freefuse_masks=voted, opacity=0.5)
    assert legend[2] == "alice\nbob"
    preview = module(pack, "freefuse_comfy.preview").legend(voted)
    assert [e["empty"] for e in preview] == [False, True]
