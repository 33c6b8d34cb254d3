import pytest
import torch

from freefuse_core import LowRankTerm, MaskedLowRank, Prefetcher
from freefuse_core.prefetch import group_of

IN, OUT = 6, 9
CPU = torch.device("cpu")


def layers(blocks: int) -> dict[str, MaskedLowRank]:
    """Two layers per double block (a fused qkv-like one with three parts, and a plain one)."""
    g = torch.Generator().manual_seed(blocks)
    made = {}
    for i in range(blocks):
        made[f"double_blocks.{i}.img_attn.qkv"] = MaskedLowRank(
            [LowRankTerm(l, torch.randn(2 + l, IN, generator=g), torch.randn(OUT // 3, 2 + l, generator=g),
                         part * (OUT // 3)) for l in range(2) for part in range(3)], OUT)
        made[f"double_blocks.{i}.img_mlp.0"] = MaskedLowRank(
            [LowRankTerm(l, torch.randn(3, IN, generator=g), torch.randn(OUT, 3, generator=g), 0) for l in range(2)],
            OUT)
    return made


def out_of(lowrank: MaskedLowRank) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x, mask = torch.randn(2, 4, IN, generator=g).double(), (torch.rand(2, 4, 2, generator=g) > 0.5).double()
    return lowrank.add_to(torch.zeros(2, 4, OUT, dtype=torch.float64), x, mask)


def test_groups_are_runs_of_transformer_blocks_or_top_modules():
    assert group_of("double_blocks.3.img_attn.qkv") == "double_blocks.3"
    assert group_of("single_blocks.12.linear1") == "single_blocks.12"
    assert group_of("final_layer.adaLN_modulation.1") == "final_layer"
    assert group_of("double_blocks.3.img_attn.qkv", 2) == group_of("double_blocks.2.txt_mlp.0", 2) == "double_blocks.2"
    assert group_of("single_blocks.12.linear1", 4) == "single_blocks.12" != group_of("single_blocks.11.linear1", 4)
    assert group_of("final_layer.adaLN_modulation.1", 2) == "final_layer"


def test_fetched_terms_equal_the_resident_cast_in_any_call_order():
    held = layers(8)   # 4 groups of 2 blocks, 2 of them on the device at a time
    prefetch = Prefetcher(held, window=1, blocks=2)
    paths = list(held)
    calls = paths * 2 + [paths[0], paths[5], paths[1], paths[4], paths[0]]  # revisits a group after others
    for path in calls:
        fetched = prefetch.fetch(path, CPU, torch.float64)
        assert torch.equal(out_of(fetched), out_of(held[path].to(CPU, torch.float64))), path
        ring = prefetch.rings[(CPU, torch.float64)]
        buffers = {b.untyped_storage().data_ptr() for b in ring.buffers}
        assert all(f.untyped_storage().data_ptr() in buffers for f in fetched.floats())


def test_the_ring_holds_the_current_group_and_the_next_window_groups():
    held = layers(6)
    prefetch = Prefetcher(held, window=2, blocks=1)
    paths = list(held)
    for path in paths:  # first evaluation: the order is being learnt
        prefetch.fetch(path, CPU, torch.float32)
    groups = [f"double_blocks.{i}" for i in range(6)]
    assert prefetch.order == groups
    ring = prefetch.rings[(CPU, torch.float32)]
    assert len(ring.buffers) == 3
    for i, path in enumerate(paths):
        prefetch.fetch(path, CPU, torch.float32)
        here = i // 2
        assert set(ring.held) == {groups[(here + k) % 6] for k in (0, 1, 2)}
    prefetch.clear()
    assert not prefetch.rings


def test_a_window_below_one_group_is_refused():
    with pytest.raises(ValueError, match="at least 1 group"):
        Prefetcher(layers(1), window=0)
    with pytest.raises(ValueError, match="at least 1 block"):
        Prefetcher(layers(1), blocks=0)
