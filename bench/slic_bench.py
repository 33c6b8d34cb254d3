"""SLIC time at FreeFuse's working size, for the paper's superpixel count and for the working image's own.

    python3 bench/slic_bench.py [--px 256] [--full 1024] [--beside-python]

Eq. 11 asks for `n_segments = sqrt(H W)` of the generated image (1024 at 1024 x 1024); the pack runs
SLIC on a copy reduced to `--px` on the long side. Prints the median of 5 runs of
`freefuse_core.slic_segments` on a smooth image with noise, for both counts. `--beside-python`
instead times SLIC (paper's count) in a worker thread while the main thread runs Python without
pause, as it does while it launches step k's kernels: at Python's default switch interval and
inside `quick_gil_handoff`, and how much Python work the main thread got through meanwhile.
"""
import argparse
import contextlib
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from freefuse_core import quick_gil_handoff, slic_segments  # noqa: E402


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--px", type=int, default=256)
    args.add_argument("--full", type=int, default=1024)
    args.add_argument("--beside-python", action="store_true")
    args = args.parse_args()
    yy, xx = np.mgrid[0:args.px, 0:args.px] / args.px
    noise = 0.05 * np.random.default_rng(0).standard_normal((args.px, args.px, 3))
    image = np.clip(np.stack([yy, xx, yy * xx], -1) + noise, 0, 1)
    if args.beside_python:
        beside_python(image, (args.full, args.full))
        return
    for label, full in (("working image's own count", None), ("paper's count", (args.full, args.full))):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            labels = slic_segments(image, sigma=1.0, full_size=full)
            times.append(time.perf_counter() - start)
        sys.stdout.write(f"{args.px} px, {label}: {labels.max() + 1} segments, "
                         f"median {statistics.median(times) * 1000:.1f} ms\n")


def busy_python(seconds: float) -> int:
    """Pure Python for `seconds` (it holds the GIL as a thread launching kernels does); loop count."""
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        count += 1
    return count


def beside_python(image: np.ndarray, full: tuple[int, int]) -> None:
    def slic_seconds() -> float:
        start = time.perf_counter()
        slic_segments(image, sigma=1.0, full_size=full)
        return time.perf_counter() - start

    alone = statistics.median(slic_seconds() for _ in range(5))
    sys.stdout.write(f"{image.shape[0]} px, SLIC alone: median {alone * 1000:.1f} ms\n")
    for label, handoff in (("default switch interval", None), ("inside quick_gil_handoff", quick_gil_handoff)):
        times, work = [], []
        for _ in range(5):
            result, python_alone = {}, busy_python(alone)
            worker = threading.Thread(target=lambda: result.setdefault("s", slic_seconds()))
            with handoff() if handoff else contextlib.nullcontext():
                interval = sys.getswitchinterval()
                worker.start()
                work.append(busy_python(alone) / python_alone)
                worker.join()
            times.append(result["s"])
        sys.stdout.write(f"{image.shape[0]} px, SLIC beside busy Python, {label} ({interval * 1000:g} ms): median "
                         f"{statistics.median(times) * 1000:.1f} ms; meanwhile the Python thread did "
                         f"{statistics.median(work):.2f} of the work it does alone\n")


if __name__ == "__main__":
    main()
