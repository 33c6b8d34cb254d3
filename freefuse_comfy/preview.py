"""The voted masks as coloured regions over the step-k image (alpha blend, one colour a subject)."""
from __future__ import annotations

import torch

from .sampling import FreeFuseMasks

PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60))


def colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def overlay(masks: FreeFuseMasks, opacity: float) -> torch.Tensor:
    """`[B, H, W, 3]`: `(1 - a) * image + a * colour(owner)` with `a = opacity`."""
    colours = torch.tensor([colour(i) for i in range(len(masks.subjects))], dtype=torch.float32) / 255
    painted = torch.einsum("bshw,sc->bhwc", masks.pixel_masks, colours)
    image = torch.nn.functional.interpolate(masks.image.movedim(-1, 1), size=painted.shape[1:3],
                                            mode="bilinear").movedim(1, -1)
    return (1 - opacity) * image + opacity * painted


def legend(masks: FreeFuseMasks) -> list[dict]:
    """Subject names with their colours, for the preview legend in the browser."""
    return [{"name": name, "color": "#%02x%02x%02x" % colour(i), "empty": name in masks.empty_subjects}
            for i, name in enumerate(masks.subjects)]


def mask_batch(masks: FreeFuseMasks) -> torch.Tensor:
    """`[B*S, H, W]` MASK batch: for each image, one mask per subject in subject order."""
    return masks.pixel_masks.flatten(0, 1)
