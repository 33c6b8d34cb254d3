import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from references import dense_attention, dense_subject_maps

from freefuse_core import cross_rows, masks_from_attention, salient_tokens, subject_maps, suppress_sinks

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
        for b in range(batch):
            alone = subject_maps(q[b:b + 1], k[b:b + 1], txt_len, grid, sets, sink_handling=sinks, chunk=chunk)
            torch.testing.assert_close(got[b:b + 1], alone, rtol=1e-6, atol=1e-7)


def planted(grid, regions, txt_len=4, heads=2, dim=16, strength=6.0):
    """q, k where text token l attends to `regions[l]` (a bool grid) and image tokens of a region
    attend to their own region."""
    n = grid[0] * grid[1]
    q = torch.zeros(1, heads, txt_len + n, dim)
    k = torch.zeros(1, heads, txt_len + n, dim)
    for l, region in enumerate(regions):
        idx = torch.nonzero(torch.as_tensor(region).flatten()).flatten() + txt_len
        q[:, :, l, l] = strength
        k[:, :, idx, l] = 1.0
        q[:, :, idx, l] = strength
    return q, k


def blocks_image(regions, grid, patch=16, size=None):
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


def rectangles(grid, boxes):
    """Bool grids of the given (top, bottom, left, right) token boxes; the last region is the rest."""
    regions = []
    for top, bottom, left, right in boxes:
        r = np.zeros(grid, dtype=bool)
        r[top:bottom, left:right] = True
        regions.append(r)
    regions.append(~np.any(regions, axis=0))
    return regions


@pytest.mark.parametrize("grid, size, boxes", [
    ((16, 16), None, [(0, 16, 0, 8)]),
    ((12, 20), None, [(0, 6, 0, 9), (6, 12, 0, 9)]),
    ((16, 12), (250, 180), [(2, 10, 1, 6), (0, 16, 8, 12)]),
])
def test_planted_regions_are_recovered(grid, size, boxes):
    h, w = grid
    regions = rectangles(grid, boxes)
    q, k = planted(grid, regions)
    image = blocks_image(regions, grid, size=size)
    sets = [[l] for l in range(len(regions))]
    result = masks_from_attention(q, k, 4, grid, sets, image)
    truth = torch.as_tensor(np.stack(regions)).reshape(len(regions), -1).T
    for l in range(len(regions)):
        assert iou(result.token_masks[0, :, l], truth[:, l]) >= 0.9
    assert torch.equal(result.token_masks.sum(-1), torch.ones(1, h * w))
    height, width = size or (h * 16, w * 16)
    assert result.pixel_masks.shape == (1, len(regions), height, width)
    assert result.owner.shape == (1, height, width) and result.maps.shape == (1, len(regions), h * w)
    assert torch.equal(result.pixel_masks.sum(1), torch.ones(1, height, width))


def test_edge_sink_wins_a_region_only_without_sink_handling():
    """Subject 0's text token puts most of its attention on one bottom-border token inside subject 1's
    region, whose own query attends (sharply) to that region: a sink that drags subject 0 there."""
    grid = (10, 10)       # N = 100: |T_l| = 1, so the salient token is the sink itself without handling
    top = np.zeros(grid, dtype=bool)
    top[:5] = True
    regions = [top, ~top]
    sink = 9 * 10 + 3     # bottom border, in subject 1's region
    q, k = planted(grid, regions)
    k[:, :, 4 + sink] = 0
    k[:, :, 4 + sink, 0] = 3.0   # text token 0 (q = 6 e_0) sees the sink at logit 18
    q[:, :, 4 + sink, 1] = 12.0  # the sink's own row: subject 1's region, sharper than its other tokens
    n = grid[0] * grid[1]
    cross = cross_rows(q, k, 4, n, [0, 1])
    assert int(salient_tokens(cross[:, :1], 0.01)[0, 0, 0]) == sink
    assert int(salient_tokens(suppress_sinks(cross, grid)[:, :1], 0.01)[0, 0, 0]) != sink
    image = blocks_image(regions, grid)
    truth = torch.as_tensor(top).flatten()
    without = masks_from_attention(q, k, 4, grid, [[0], [1]], image, sink_handling=False)
    assert iou(without.token_masks[0, :, 0], ~truth) >= 0.9   # the wrong subject wins the bottom region
    handled = masks_from_attention(q, k, 4, grid, [[0], [1]], image)
    assert iou(handled.token_masks[0, :, 0], truth) >= 0.9
    assert iou(handled.token_masks[0, :, 1], ~truth) >= 0.9


def test_sinks_only_on_the_border_and_rows_renormalised():
    rows = torch.tensor([[[0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.0, 0.0, 0.0]]])  # 3 x 3 grid, centre is index 4
    cleaned = suppress_sinks(rows, (3, 3), top_p=0.2)       # k = 1: only the largest entry can go
    torch.testing.assert_close(cleaned, torch.tensor([[[0.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.0, 0.0, 0.0]]]))
    centre = torch.tensor([[[0.1, 0.1, 0.1, 0.1, 0.6, 0.0, 0.0, 0.0, 0.0]]])
    assert torch.equal(suppress_sinks(centre, (3, 3), top_p=0.2), centre)
    with pytest.raises(ValueError, match="only to border sinks"):
        suppress_sinks(torch.tensor([[[1.0, 0, 0, 0, 0, 0, 0, 0, 0]]]), (3, 3), top_p=0.2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(txt_len=4, grid=(4, 4), token_sets=[[0]]), "do not fit"),
    (dict(txt_len=4, grid=(3, 3), token_sets=[[4]]), "text positions below 4"),
    (dict(txt_len=4, grid=(3, 3), token_sets=[[]]), "non-empty"),
    (dict(txt_len=4, grid=(3, 3), token_sets=[]), "no subject"),
    (dict(txt_len=4, grid=(0, 3), token_sets=[[0]]), "two positive sizes"),
    (dict(txt_len=4, grid=(3, 3), token_sets=[[0]], top_p=0.0), "top_p"),
    (dict(txt_len=4, grid=(3, 3), token_sets=[[0]], chunk=0), "chunk"),
])
def test_inputs_are_validated(kwargs, match):
    q = torch.zeros(1, 2, 14, 4)
    with pytest.raises(ValueError, match=match):
        subject_maps(q, q, **kwargs)
    with pytest.raises(ValueError, match="B, heads, L, D"):
        subject_maps(q[0], q[0], 4, (3, 3), [[0]])
