"""Superpixel voting (Eq. 11-13) and the hard masks it gives.

- Eq. 11: `R = SLIC(x0_image, n_segments = round(sqrt(H W)), compactness = 10, sigma)`.
- Eq. 12: each `S_l` is upsampled bilinearly from the `h x w` token grid to pixels (`patch` px a
  token, cropped to the image) and summed over each superpixel: `s_{l,r} = sum_{p in r} S_l(p)`.
- Eq. 13: the winner `argmax_l s_{l,r}` owns every pixel of `r`; `F_l = 1` on what `l` owns.
The pixel ownership is brought to the token grid by majority per `patch x patch` cell (decision),
so every pixel and every token belongs to exactly one subject.

SLIC may run on a reduced copy of the image (`h x w` of the full `H x W`). The maps then reach its
size in two bilinear steps, tokens to `H x W`, then `H x W` to `h x w`, each separable: the pair is
`Wy S_l Wx^T` with per-axis weights `Wy` `[h, grid h]`, `Wx` `[w, grid w]` (the full-size maps are never
formed). Where `H x W` is a whole multiple `f` of `h x w` and `f` divides `patch`, the token cells are
counted on the reduced ownership itself, `patch / f` pixels a side: nearest resizing repeats each pixel
`f x f` times, so every count scales by `f^2` and each cell's winner is the same.
"""
from __future__ import annotations

import contextlib
import functools
import math
import sys
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from skimage.segmentation import slic

from .attention import subject_maps

SLIC_SWITCH_INTERVAL = 5e-5   # seconds: Python's thread switch interval while SLIC runs beside step k


def slic_segments(image: np.ndarray, sigma: float = 1.0, compactness: float = 10.0,
                  full_size: tuple[int, int] | None = None) -> np.ndarray:
    """Eq. 11: SLIC labels (0-based ints, `H x W`) of an `H x W x 3` image in [0, 1].

    `n_segments = round(sqrt(H W))` of the generated image: `full_size` when SLIC runs on a reduced
    copy of it, so the superpixels cover the same share of the picture at any working size.
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"SLIC needs an H x W x 3 image; got shape {image.shape}")
    height, width = full_size or image.shape[:2]
    return slic(image, n_segments=round(math.sqrt(height * width)), compactness=compactness, sigma=sigma,
                start_label=0, channel_axis=-1)


@contextlib.contextmanager
def quick_gil_handoff(interval: float = SLIC_SWITCH_INTERVAL):
    """Python's thread switch interval shortened to `interval` seconds inside, then restored.

    For SLIC in a worker thread beside the main thread's step `k`: skimage's SLIC takes the GIL back
    many times, and the main thread, launching kernels, keeps it until the switch interval (5 ms by
    default) runs out, so each of those waits costs SLIC up to one interval
    (`python3 bench/slic_bench.py --beside-python` measures it). The setting is the process's: with
    handoffs open in several threads, the first one in saves it and the last one out restores it.
    """
    with _HANDOFF["lock"]:
        if _HANDOFF["open"] == 0:
            _HANDOFF["saved"] = sys.getswitchinterval()
        _HANDOFF["open"] += 1
        sys.setswitchinterval(min(_HANDOFF["saved"], interval))
    try:
        yield
    finally:
        with _HANDOFF["lock"]:
            _HANDOFF["open"] -= 1
            if _HANDOFF["open"] == 0:
                sys.setswitchinterval(_HANDOFF["saved"])


_HANDOFF = {"lock": threading.Lock(), "open": 0, "saved": None}   # the handoffs open now, process-wide


def _check(height: int, width: int, grid: tuple[int, int], patch: int):
    if height > grid[0] * patch or width > grid[1] * patch:
        raise ValueError(f"a {height}x{width} image does not fit a {grid[0]}x{grid[1]} token grid of {patch} px")


@functools.lru_cache(maxsize=64)
def axis_weights(cells: int, patch: int, pixels: int, out: int) -> torch.Tensor:
    """`[out, cells]` float32, one axis of `maps_at`: `cells` tokens linearly to `cells * patch` pixels, the
    first `pixels` kept (Eq. 12's upsampling), then linearly to `out` where `out != pixels`. Read-only:
    cached."""
    weights = F.interpolate(torch.eye(cells)[None], size=cells * patch, mode="linear", align_corners=False)[0]
    weights = weights[:, :pixels]
    if out != pixels:
        weights = F.interpolate(weights[None], size=out, mode="linear", align_corners=False)[0]
    return weights.t().contiguous()


def maps_at(maps: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], out: tuple[int, int],
            patch: int = 16) -> torch.Tensor:
    """`[S, N]` token-grid maps `[S, out_h, out_w]`: bilinear to the padded grid of `patch` px a token,
    cropped to `size`, then bilinear to `out` (where it differs): `Wy S Wx^T` per subject, with no
    `size`-sized intermediate."""
    _check(*size, grid, patch)
    rows = axis_weights(grid[0], patch, size[0], out[0]).to(maps.device)
    columns = axis_weights(grid[1], patch, size[1], out[1]).to(maps.device)
    return rows @ maps.float().reshape(-1, *grid) @ columns.t()


def vote_owner(maps: torch.Tensor, segments, grid: tuple[int, int], patch: int = 16,
               size: tuple[int, int] | None = None) -> torch.Tensor:
    """Eq. 12-13: the owning subject of every pixel of `segments`, int64 of its shape.

    `size` is the image size the token grid covers (default: the segments' own size); segments of
    a smaller working image get the maps resized once more, bilinearly, to their size.
    """
    labels = torch.as_tensor(np.asarray(segments), dtype=torch.long, device=maps.device)
    if maps.ndim != 2 or maps.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"maps must be [subjects, {grid[0] * grid[1]}] for a {grid[0]}x{grid[1]} grid; "
                         f"got {tuple(maps.shape)}")
    if labels.ndim != 2 or labels.numel() == 0 or int(labels.min()) < 0:
        raise ValueError(f"segments must be a non-empty H x W map of labels >= 0; got shape {tuple(labels.shape)}")
    up = maps_at(maps, grid, size or tuple(labels.shape), tuple(labels.shape), patch)
    count = int(labels.max()) + 1
    sums = torch.zeros(up.shape[0], count, dtype=up.dtype, device=up.device)
    sums.index_add_(1, labels.flatten(), up.flatten(1))
    return sums.argmax(dim=0)[labels]


def resize_owner(owner: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Ownership of a working image brought to `size` pixels (nearest neighbour)."""
    if tuple(owner.shape) == tuple(size):
        return owner
    return F.interpolate(owner[None, None].float(), size=size, mode="nearest")[0, 0].long()


def _check_owner(owner: torch.Tensor, n_subjects: int):
    if owner.ndim != 2 or owner.numel() == 0:
        raise ValueError(f"owner must be a non-empty H x W map; got shape {tuple(owner.shape)}")
    if int(owner.min()) < 0 or int(owner.max()) >= n_subjects:
        raise ValueError(f"owner holds subjects {int(owner.min())}..{int(owner.max())}, outside 0..{n_subjects - 1}")


def owner_to_pixel_masks(owner: torch.Tensor, n_subjects: int) -> torch.Tensor:
    """`[S, H, W]` one-hot float32 masks at pixel resolution."""
    _check_owner(owner, n_subjects)
    return torch.stack([owner == s for s in range(n_subjects)]).float()


def owner_to_token_masks(owner: torch.Tensor, n_subjects: int, grid: tuple[int, int], patch: int = 16,
                         size: tuple[int, int] | None = None) -> torch.Tensor:
    """`[N, S]` one-hot masks on the token grid: each cell goes to the subject owning most of it.

    Cells partly outside the image count only their inside pixels. Cells wholly outside count each
    of their pixels as the owner of its nearest inside pixel (the ownership edge-padded). Ties go to
    the lowest index. Counted one subject at a time on `[rows, patch, columns, patch]` views, with no
    one-hot image. `size`: the image size the grid covers, where `owner` is a working size's
    ownership (as `resize_owner(owner, size)` would count; on `owner` itself where that is the same).
    """
    if size is not None and tuple(size) != tuple(owner.shape):
        factor = size[0] // owner.shape[0]
        if tuple(size) != (factor * owner.shape[0], factor * owner.shape[1]) or patch % factor:
            return owner_to_token_masks(resize_owner(owner, size), n_subjects, grid, patch)
        patch //= factor
    height, width = owner.shape
    _check(height, width, grid, patch)
    _check_owner(owner, n_subjects)
    full = (grid[0] * patch, grid[1] * patch)
    padded = owner if (height, width) == full else F.pad(
        owner[None, None].float(), (0, full[1] - width, 0, full[0] - height), mode="replicate")[0, 0].long()
    cells = padded.reshape(grid[0], patch, grid[1], patch)
    inside = None
    if (height, width) != full:
        mask = torch.zeros(full, dtype=torch.bool, device=owner.device)
        mask[:height, :width] = True
        inside = mask.reshape(cells.shape)
        partly = inside.sum(dim=(1, 3)) > 0     # cells with an inside pixel count those alone
    counts = []
    for s in range(n_subjects):
        hit = cells == s
        count = hit.sum(dim=(1, 3))
        if inside is not None:
            count = torch.where(partly, (hit & inside).sum(dim=(1, 3)), count)
        counts.append(count.reshape(-1))
    return F.one_hot(torch.stack(counts, dim=-1).argmax(dim=-1), n_subjects).float()


@dataclass(frozen=True)
class MaskResult:
    token_masks: torch.Tensor   # [B, N, S]
    pixel_masks: torch.Tensor   # [B, S, H, W]
    maps: torch.Tensor          # [B, S, N], Eq. 10
    owner: torch.Tensor         # [B, H, W]


def masks_from_attention(q, k, txt_len, grid, token_sets, image: np.ndarray, sigma: float = 1.0,
                         top_p: float = 0.01, sink_handling: bool = True, patch: int = 16) -> MaskResult:
    """The whole stage 1 for a batch: maps (Eq. 5-10), superpixels (Eq. 11), votes (Eq. 12-13).

    `image`: the decoded `x0` of every batch item, `B x H x W x 3` in [0, 1].
    """
    if image.ndim != 4 or image.shape[0] != q.shape[0] or image.shape[-1] != 3:
        raise ValueError(f"image must be B x H x W x 3 with B = {q.shape[0]}; got {image.shape}")
    maps = subject_maps(q, k, txt_len, grid, token_sets, top_p, sink_handling).cpu()
    owners = torch.stack([vote_owner(maps[b], slic_segments(image[b], sigma), grid, patch)
                          for b in range(maps.shape[0])])
    n = len(token_sets)
    return MaskResult(token_masks=torch.stack([owner_to_token_masks(o, n, grid, patch) for o in owners]),
                      pixel_masks=torch.stack([owner_to_pixel_masks(o, n) for o in owners]),
                      maps=maps, owner=owners)
