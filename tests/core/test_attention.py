import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from references import dense_attention, dense_subject_maps

from freefuse_core import cross_rows, masks_from_attention, subject_maps

GRIDS = [(3, 5), (7, 4), (8, 8), (5, 5), (4, 9)]


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@st.composite
def attention_case(draw):
    batch = draw(st.integers(1, 3))
    heads = draw(st.integers(1, 4))
    grid = draw(st.sampled_from(GRIDS))
    txt_len = draw(st.integers(12, 14))
    sizes = draw(st.lists(st.integers(1, 2), min_size=1, max_size=6))
    order = draw(st.permutations(range(txt_len)))
    starts = np.cumsum([0] + sizes)
    sets = [sorted(order[a:b]) for a, b in zip(starts[:-1], starts[1:])]
    seed = draw(st.integers(0, 2**16))
    chunk = draw(st.sampled_from([1, 3, 7, 1024]))
    extra = draw(st.integers(0, 2))  # tokens after the image (reference latents) are ignored
    return batch, heads, grid, txt_len, sets, seed, chunk, extra


@settings(max_examples=25, deadline=None)
@given(attention_case())
def test_chunked_maps_equal_dense_full_softmax(case):
    batch, heads, grid, txt_len, sets, seed, chunk, extra = case
    n = grid[0] * grid[1]
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, txt_len + n + extra, 8, generator=g) * 2
    k = torch.randn(batch, heads, txt_len + n + extra, 8, generator=g) * 2
    rows = sorted({t for s in sets for t in s})
    assert rel_err(cross_rows(q, k, txt_len, n, rows, chunk), dense_attention(q, k, txt_len, n)[:, rows]) < 1e-5
    for sinks in (True, False):
        got = subject_maps(q, k, txt_len, grid, sets, sink_handling=sinks, chunk=chunk)
        assert got.dtype == torch.float32 and got.shape == (batch, len(sets), n)
        assert rel_err(got, dense_subject_maps(q, k, txt_len, grid, sets, sinks=sinks)) < 1e-5
        alone = subject_maps(q[-1:], k[-1:], txt_len, grid, sets, sink_handling=sinks, chunk=chunk)
        torch.testing.assert_close(got[-1:], alone, rtol=1e-6, atol=1e-7)


def planted(grid, regions, txt_len=4, heads=2, dim=16, sink=None, strength=6.0):
    """q, k where text token l attends to `regions[l]` (a bool grid) and image tokens of a region
    attend to their own region. `sink`: (text token, border index) given a very large key."""
    h, w = grid
    n = h * w
    q = torch.zeros(1, heads, txt_len + n, dim)
    k = torch.zeros(1, heads, txt_len + n, dim)
    for l, region in enumerate(regions):
        idx = torch.nonzero(torch.as_tensor(region).flatten()).flatten() + txt_len
        q[:, :, l, l] = strength
        k[:, :, idx, l] = 1.0
        q[:, :, idx, l] = strength
    if sink is not None:
        token, index = sink
        k[:, :, txt_len + index] = 0
        k[:, :, txt_len + index, token] = 3.0
    return q, k


def blocks_image(regions, grid, patch=16, size=None):
    h, w = grid
    colours = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.1, 0.2, 0.9], [0.8, 0.8, 0.1]])
    owner = np.zeros(grid, dtype=int)
    for l, region in enumerate(regions):
        owner[np.asarray(region)] = l
    img = colours[owner].repeat(patch, 0).repeat(patch, 1)
    if size is not None:
        img = img[: size[0], : size[1]]
    return img[None]


def iou(a, b):
    a, b = a.bool(), b.bool()
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("grid, size", [((16, 16), None), ((12, 20), None), ((16, 12), (250, 180))])
def test_planted_regions_are_recovered(grid, size):
    h, w = grid
    left = np.zeros(grid, dtype=bool)
    left[:, : w // 2] = True
    regions = [left, ~left]
    q, k = planted(grid, regions)
    image = blocks_image(regions, grid, size=size)
    result = masks_from_attention(q, k, 4, grid, [[0], [1]], image)
    truth = torch.as_tensor(np.stack(regions)).reshape(2, -1).T
    for l in range(2):
        assert iou(result.token_masks[0, :, l], truth[:, l]) >= 0.9
    assert torch.equal(result.token_masks.sum(-1), torch.ones(1, h * w))
    assert result.pixel_masks.shape[-2:] == (size or (h * 16, w * 16))


def test_edge_sink_fools_the_vote_only_without_sink_handling():
    grid = (16, 16)
    h, w = grid
    top = np.zeros(grid, dtype=bool)
    top[: h // 2] = True
    regions = [top, ~top]
    sink_index = (h - 1) * w + 3  # on the bottom border, inside the other subject's region
    q, k = planted(grid, regions, sink=(0, sink_index), strength=3.0)
    with_sinks = subject_maps(q, k, 4, grid, [[0], [1]])
    without = subject_maps(q, k, 4, grid, [[0], [1]], sink_handling=False)
    bottom = torch.as_tensor(~top).flatten()
    assert without[0, 0][bottom].sum() > without[0, 0][~bottom].sum()   # subject 0 dragged to the sink
    assert with_sinks[0, 0][~bottom].sum() > with_sinks[0, 0][bottom].sum()
