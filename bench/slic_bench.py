"""SLIC time at FreeFuse's working size, for the paper's superpixel count and for the working image's own.

    python3 bench/slic_bench.py [--px 256] [--full 1024]

Eq. 11 asks for `n_segments = sqrt(H W)` of the generated image (1024 at 1024 x 1024); the pack runs
SLIC on a copy reduced to `--px` on the long side. Prints the median of 5 runs of
`freefuse_core.slic_segments` on a smooth image with noise, for both counts.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from freefuse_core import slic_segments  # noqa: E402


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--px", type=int, default=256)
    args.add_argument("--full", type=int, default=1024)
    args = args.parse_args()
    yy, xx = np.mgrid[0:args.px, 0:args.px] / args.px
    noise = 0.05 * np.random.default_rng(0).standard_normal((args.px, args.px, 3))
    image = np.clip(np.stack([yy, xx, yy * xx], -1) + noise, 0, 1)
    for label, full in (("working image's own count", None), ("paper's count", (args.full, args.full))):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            labels = slic_segments(image, sigma=1.0, full_size=full)
            times.append(time.perf_counter() - start)
        sys.stdout.write(f"{args.px} px, {label}: {labels.max() + 1} segments, "
                         f"median {statistics.median(times) * 1000:.1f} ms\n")


if __name__ == "__main__":
    main()
