import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freefuse_core import owner_to_pixel_masks, owner_to_token_masks, slic_segments, upsample_maps, vote_owner


def test_vote_sums_each_superpixel_like_a_loop():
    g = torch.Generator().manual_seed(0)
    grid, size = (3, 5), (40, 70)
    maps = torch.rand(3, 15, generator=g)
    segments = np.random.default_rng(0).integers(0, 9, size)
    owner = vote_owner(maps, segments, grid)
    up = upsample_maps(maps, grid, size)
    for r in range(9):
        where = torch.as_tensor(segments == r)
        assert (owner[where] == int(up[:, where].sum(-1).argmax())).all()


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 6), w=st.integers(1, 6), cut_h=st.integers(0, 15), cut_w=st.integers(0, 15),
       subjects=st.integers(1, 5), seed=st.integers(0, 999))
def test_token_and_pixel_masks_partition_odd_sizes(h, w, cut_h, cut_w, subjects, seed):
    height, width = max(1, h * 16 - cut_h), max(1, w * 16 - cut_w)
    owner = torch.as_tensor(np.random.default_rng(seed).integers(0, subjects, (height, width)))
    tokens = owner_to_token_masks(owner, subjects, (h, w))
    pixels = owner_to_pixel_masks(owner, subjects)
    assert tokens.shape == (h * w, subjects) and torch.equal(tokens.sum(-1), torch.ones(h * w))
    assert torch.equal(pixels.sum(0), torch.ones(height, width))


def test_token_cell_goes_to_the_majority():
    owner = torch.zeros(20, 32, dtype=torch.long)
    owner[:, 16:] = 1
    owner[:16, 16:18] = 0         # a sliver of subject 0 in the second cell: still subject 1's
    owner[16:, :] = 2             # the bottom cells are partly outside the image: inside pixels decide
    masks = owner_to_token_masks(owner, 3, (2, 2))
    assert masks.argmax(-1).tolist() == [0, 1, 2, 2]


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
