"""The Triton kernels of the masked low-rank term, run on the CPU by Triton's interpreter.

The interpreter executes the same kernel code as the GPU (block loads, masks, `tl.dot`), so the
indexing (tile tables, overlapping slices, rank tiles, ragged edges) is checked here; speed is
measured on the GPU (bench/).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys
import torch
from freefuse_core import kernels
from freefuse_core.lowrank import LowRankTerm, MaskedLowRank

def case(seed, tokens, k, out, spans, rank, masked):
    g = torch.Generator().manual_seed(seed)
    terms = [LowRankTerm(i % 3, torch.randn(rank, k, generator=g) / k ** 0.5,
                         torch.randn(stop - start, rank, generator=g), start)
             for i, (start, stop) in enumerate(spans)]
    layer = MaskedLowRank(terms, out)
    x = torch.randn(tokens, k, generator=g)
    f = (torch.rand(tokens, 3, generator=g) > 0.4).float() if masked else None
    y0 = torch.randn(tokens, out, generator=g)
    want = y0.double().clone()
    for t in terms:
        fac = 1.0 if f is None else f[:, t.subject:t.subject + 1].double()
        want[:, t.out_start:t.out_start + t.up.shape[0]] += fac * (x.double() @ t.down.double().t() @ t.up.double().t())
    half = torch.float16
    packed = kernels.PackedUp(layer.slices, out, "cpu", half)
    h = kernels.masked_down(x.to(half), layer.down.to(half), None if f is None else f.to(half), layer.owner)
    y = y0.to(half)
    kernels.add_up(y, h, packed)
    delta = want - y0.double()
    err = float((y.double() - want).norm() / delta.norm())
    return {"err": err, "tables": len(packed.tables)}

cases = [
    case(0, 100, 96, 90, [(0, 40), (0, 40), (50, 80)], 8, True),          # ragged edges, shared slice
    case(1, 70, 200, 300, [(0, 300), (0, 100), (100, 200), (200, 300)], 24, True),  # whole + parts overlap
    case(2, 33, 64, 256, [(0, 128), (128, 256)] * 3, 16, True),            # R = 96: two rank tiles
    case(3, 65, 130, 50, [(10, 50)], 4, False),                           # unmasked, rank 4 padded to 16
]
print(json.dumps(cases))
"""


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kernels_match_the_float64_reference(results):
    errors = [r["err"] for r in results]
    assert max(errors) < 3e-3, errors   # float16 operands, float32 accumulation


def test_overlapping_slices_go_to_separate_launches(results):
    assert [r["tables"] for r in results] == [1, 2, 1, 1]
