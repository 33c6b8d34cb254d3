"""CPU time of the voting that follows SLIC in an extraction (Eq. 12-13 and the masks), per stage.

    python3 bench/vote_bench.py [--full 1024] [--px 256] [--subjects 2]

As `freefuse_comfy.sampling._vote` runs them for one image: `vote_owner` (maps resized to the working
image, summed per superpixel) and `owner_to_token_masks` (counted on the working size's ownership); then
what `FreeFuseMasks.pixel_masks` does on its first read (Mask Preview), `resize_owner` to `--full` px and
`owner_to_pixel_masks`. Random maps and SLIC labels of a random image at `--px`; prints the median of 5
warm runs of each stage.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from freefuse_core import (  # noqa: E402
    owner_to_pixel_masks,
    owner_to_token_masks,
    resize_owner,
    slic_segments,
    vote_owner,
)


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--full", type=int, default=1024)
    args.add_argument("--px", type=int, default=256)
    args.add_argument("--subjects", type=int, default=2)
    args = args.parse_args()
    size, grid = (args.full, args.full), (args.full // 16, args.full // 16)
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(args.subjects, grid[0] * grid[1], generator=generator)
    segments = slic_segments(np.random.default_rng(0).random((args.px, args.px, 3)), full_size=size)
    stages = {"vote_owner": lambda _: vote_owner(maps, segments, grid, size=size),
              "owner_to_token_masks": lambda owner: owner_to_token_masks(owner, args.subjects, grid, size=size),
              "resize_owner (first read of pixel_masks)": lambda owner: resize_owner(owner, size),
              "owner_to_pixel_masks (first read of pixel_masks)": lambda owner: owner_to_pixel_masks(owner,
                                                                                                     args.subjects)}
    times = {name: [] for name in stages}
    for run in range(6):   # the first run warms up
        value = None
        for name, stage in stages.items():
            start = time.perf_counter()
            out = stage(value)
            if run:
                times[name].append(time.perf_counter() - start)
            value = out if name.startswith(("vote_owner", "resize_owner")) else value
    for name, seconds in times.items():
        print(f"{name:48s} {1000 * statistics.median(seconds):6.1f} ms ({args.full} px, {args.subjects} subjects, "
              f"SLIC at {args.px} px)")


if __name__ == "__main__":
    main()
