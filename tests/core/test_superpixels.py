import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from references import cell_majority

from freefuse_core import (
    maps_at,
    owner_to_pixel_masks,
    owner_to_token_masks,
    quick_gil_handoff,
    resize_owner,
    slic_segments,
    vote_owner,
)
from freefuse_core.superpixels import SLIC_SWITCH_INTERVAL


@pytest.mark.parametrize("grid, size, subjects", [((3, 5), (40, 70), 3), ((5, 7), (75, 100), 2), ((4, 4), (64, 64), 5)])
def test_vote_sums_each_superpixel_like_a_loop(grid, size, subjects):
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(subjects, grid[0] * grid[1], generator=g)
    segments = np.random.default_rng(0).integers(0, 9, size)
    owner = vote_owner(maps, segments, grid)
    assert owner.dtype == torch.int64 and owner.shape == size
    up = F.interpolate(maps.reshape(1, subjects, *grid), size=(grid[0] * 16, grid[1] * 16), mode="bilinear",
                       align_corners=False)[0, :, :size[0], :size[1]].double().numpy()
    for r in range(9):
        where = segments == r
        sums = [up[l][where].sum() for l in range(subjects)]
        assert (owner.numpy()[where] == int(np.argmax(sums))).all()


def two_pass(maps, grid, size, out):
    """Eq. 12's maps as two bilinear resizes of whole images: tokens to `size`, then `size` to `out`."""
    up = F.interpolate(maps.reshape(1, -1, *grid), size=(grid[0] * 16, grid[1] * 16), mode="bilinear",
                       align_corners=False)[0, :, :size[0], :size[1]]
    return up if tuple(size) == tuple(out) else F.interpolate(up[None], size=out, mode="bilinear",
                                                              align_corners=False)[0]


@pytest.mark.parametrize("grid, size, out", [((64, 64), (1024, 1024), (128, 128)), ((63, 38), (1000, 600), (128, 77)),
                                             ((5, 7), (75, 100), (75, 100)), ((4, 4), (64, 64), (13, 9))])
def test_maps_at_a_working_size_are_the_two_bilinear_resizes(grid, size, out):
    maps = torch.rand(3, grid[0] * grid[1], generator=torch.Generator().manual_seed(1))
    got = maps_at(maps, grid, size, out)
    assert got.shape == (3, *out)
    torch.testing.assert_close(got, two_pass(maps, grid, size, out), atol=1e-6, rtol=0)


def test_vote_on_a_working_size_sums_the_maps_resized_to_it():
    grid, size, out = (8, 6), (128, 96), (32, 24)
    maps = torch.rand(2, 48, generator=torch.Generator().manual_seed(2))
    segments = np.random.default_rng(2).integers(0, 12, out)
    owner = vote_owner(maps, segments, grid, size=size)
    up = two_pass(maps, grid, size, out).double().numpy()
    for r in range(12):
        where = segments == r
        assert (owner.numpy()[where] == int(np.argmax([up[s][where].sum() for s in range(2)]))).all()


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 5), w=st.integers(1, 5), factor=st.sampled_from([1, 2, 3, 4, 8, 16]),
       cut_h=st.integers(0, 31), cut_w=st.integers(0, 31), extra=st.integers(0, 15), subjects=st.integers(2, 4),
       seed=st.integers(0, 999))
def test_token_masks_of_a_working_size_match_those_of_its_full_size_owner(h, w, factor, cut_h, cut_w, extra,
                                                                        subjects, seed):
    """Counted on the small ownership where the full size is a whole multiple of it (every factor dividing the
    16 px patch); otherwise (`extra` columns, or the factor 3) as the full-size ownership counts."""
    small = (max(1, (h * 16 - cut_h) // factor), max(1, (w * 16 - cut_w) // factor))
    size = (small[0] * factor, min(w * 16, small[1] * factor + extra % factor))
    owner = torch.as_tensor(np.random.default_rng(seed).integers(0, subjects, small))
    full = resize_owner(owner, size)
    assert torch.equal(owner_to_token_masks(owner, subjects, (h, w), size=size),
                       cell_majority(full, subjects, (h, w)))


def test_vote_rejects_an_image_larger_than_the_grid():
    with pytest.raises(ValueError, match="does not fit a 2x2 token grid"):
        vote_owner(torch.rand(2, 4), np.zeros((33, 20), dtype=int), (2, 2))
    with pytest.raises(ValueError, match="maps must be"):
        vote_owner(torch.rand(2, 5), np.zeros((32, 20), dtype=int), (2, 2))


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 6), w=st.integers(1, 6), cut_h=st.integers(0, 40), cut_w=st.integers(0, 40),
       subjects=st.integers(1, 5), seed=st.integers(0, 999))
def test_token_and_pixel_masks_partition_odd_sizes(h, w, cut_h, cut_w, subjects, seed):
    height, width = max(1, h * 16 - cut_h), max(1, w * 16 - cut_w)
    owner = torch.as_tensor(np.random.default_rng(seed).integers(0, subjects, (height, width)))
    tokens = owner_to_token_masks(owner, subjects, (h, w))
    pixels = owner_to_pixel_masks(owner, subjects)
    assert tokens.shape == (h * w, subjects) and torch.equal(tokens.sum(-1), torch.ones(h * w))
    assert torch.equal(pixels.sum(0), torch.ones(height, width))


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 5), w=st.integers(1, 5), patch=st.sampled_from([1, 2, 3, 16]), cut_h=st.integers(0, 20),
       cut_w=st.integers(0, 20), subjects=st.integers(1, 4), seed=st.integers(0, 999))
def test_token_masks_are_the_majority_of_each_cell_pixel_by_pixel(h, w, patch, cut_h, cut_w, subjects, seed):
    """Against a per-pixel count of every cell (small cells make ties, which go to the lowest index)."""
    height, width = max(1, h * patch - cut_h % patch), max(1, w * patch - cut_w % patch)
    if cut_h >= patch and h > 1:    # also grids whose last rows lie wholly below the image
        height = max(1, height - patch)
    owner = torch.as_tensor(np.random.default_rng(seed).integers(0, subjects, (height, width)))
    expected = cell_majority(owner, subjects, (h, w), patch)
    assert torch.equal(owner_to_token_masks(owner, subjects, (h, w), patch), expected)
    pixels = owner_to_pixel_masks(owner, subjects)
    assert pixels.dtype == torch.float32 and torch.equal(pixels.argmax(0), owner)


def test_token_cell_goes_to_the_majority():
    owner = torch.zeros(20, 32, dtype=torch.long)
    owner[:, 16:] = 1
    owner[:16, 16:18] = 0         # a sliver of subject 0 in the second cell: still subject 1's
    owner[16:, :] = 2             # the bottom cells are partly outside the image: inside pixels decide
    masks = owner_to_token_masks(owner, 3, (2, 2))
    assert masks.argmax(-1).tolist() == [0, 1, 2, 2]


def test_cells_wholly_outside_take_the_nearest_inside_pixels():
    owner = torch.zeros(10, 40, dtype=torch.long)
    owner[:, 20:] = 1                               # cells of columns 16..31: 4 pixels of 0, 12 of 1
    masks = owner_to_token_masks(owner, 2, (3, 3))  # rows 1 and 2 of the grid lie wholly below the image
    assert masks.argmax(-1).tolist() == [0, 1, 1] * 3
    with pytest.raises(ValueError, match="outside 0..1"):
        owner_to_token_masks(owner + 1, 2, (3, 3))


def test_slic_is_called_as_eq_11(monkeypatch):
    import freefuse_core.superpixels as superpixels
    seen = {}
    real = superpixels.slic

    def spy(image, **kwargs):
        seen.update(kwargs)
        return real(image, **kwargs)

    monkeypatch.setattr(superpixels, "slic", spy)
    yy, xx = np.mgrid[0:64, 0:96] / 96.0
    labels = slic_segments(np.stack([yy, xx, yy * xx], -1), sigma=0.5)
    assert seen["n_segments"] == round(np.sqrt(64 * 96)) == 78
    assert seen["compactness"] == 10 and seen["sigma"] == 0.5 and seen["start_label"] == 0
    assert labels.shape == (64, 96) and labels.min() == 0 and labels.max() + 1 >= 39
    reduced = slic_segments(np.stack([yy, xx, yy * xx], -1)[::2, ::2], sigma=0.5, full_size=(64, 96))
    assert seen["n_segments"] == 78 and reduced.shape == (32, 48)  # the full image's count on a reduced copy


def test_gil_handoff_shortens_the_switch_interval_inside_and_restores_it_after_an_error():
    original = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        with pytest.raises(KeyError):
            with quick_gil_handoff():
                assert sys.getswitchinterval() == pytest.approx(SLIC_SWITCH_INTERVAL)
                raise KeyError("step k failed")
        assert sys.getswitchinterval() == pytest.approx(0.005)
        sys.setswitchinterval(1e-5)   # already shorter: left as it is
        with quick_gil_handoff():
            assert sys.getswitchinterval() == pytest.approx(1e-5)
    finally:
        sys.setswitchinterval(original)


def test_overlapping_gil_handoffs_restore_the_interval_once_the_last_ends():
    original = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        first, second = quick_gil_handoff(), quick_gil_handoff()
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)    # the first to open ends first: the other still runs
        assert sys.getswitchinterval() == pytest.approx(SLIC_SWITCH_INTERVAL)
        second.__exit__(None, None, None)
        assert sys.getswitchinterval() == pytest.approx(0.005)
    finally:
        sys.setswitchinterval(original)
