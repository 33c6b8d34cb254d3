import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from references import dense_layer

from freefuse_core import DenseTerm, LowRankTerm, MaskedLowRank

IN, PART, MLP = 12, 7, 12
LAYOUTS = {  # out features -> the parts of a fused output (Flux: qkv thirds; linear1 = q, k, v, mlp-in)
    15: [(0, 15)],
    21: [(0, PART), (PART, 2 * PART), (2 * PART, 3 * PART)],
    3 * PART + MLP: [(0, PART), (PART, 2 * PART), (2 * PART, 3 * PART), (3 * PART, 3 * PART + MLP)],
}


@st.composite
def layer_case(draw):
    batch, tokens = draw(st.integers(1, 3)), draw(st.integers(1, 7))
    out = draw(st.sampled_from(sorted(LAYOUTS)))
    loras = draw(st.integers(1, 6))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    terms = []
    for l in range(loras):
        kind = draw(st.sampled_from(["full", "parts", "slice", "dense", "dense_part"]))
        rank = draw(st.integers(1, 5))
        if kind == "full":
            terms.append(LowRankTerm(l, torch.randn(rank, IN, generator=g), torch.randn(out, rank, generator=g), 0))
        elif kind == "parts":   # a LoRA with its own A and B on each part of the fused output
            for start, stop in LAYOUTS[out]:
                terms.append(LowRankTerm(l, torch.randn(rank, IN, generator=g),
                                         torch.randn(stop - start, rank, generator=g), start))
        elif kind == "slice":
            start = draw(st.integers(0, out - 2))
            width = draw(st.integers(1, out - start))
            terms.append(LowRankTerm(l, torch.randn(rank, IN, generator=g), torch.randn(width, rank, generator=g),
                                     start))
        elif kind == "dense":
            terms.append(DenseTerm(l, torch.randn(out, IN, generator=g) * 0.3, 0))
        else:
            start, stop = draw(st.sampled_from(LAYOUTS[out]))
            terms.append(DenseTerm(l, torch.randn(stop - start, IN, generator=g) * 0.3, start))
    x = torch.randn(batch, tokens, IN, generator=g)
    weight = torch.randn(out, IN, generator=g)
    mask = (torch.rand(batch, tokens, loras, generator=g) > 0.5).float()
    held = draw(st.lists(st.sampled_from(LAYOUTS[out]), unique=True))   # parts kept out of the packed slice
    return x, weight, terms, mask, held


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def as_double(terms):
    return [LowRankTerm(t.subject, t.down.double(), t.up.double(), t.out_start) if isinstance(t, LowRankTerm)
            else DenseTerm(t.subject, t.delta.double(), t.out_start) for t in terms]


@settings(max_examples=30, deadline=None)
@given(layer_case())
def test_fast_path_equals_dense_reference(case):
    x, weight, terms, mask, held = case
    layer = MaskedLowRank(terms, weight.shape[0], held)
    for m in (mask, None):
        got = layer.add_to(x @ weight.T, x, m)
        assert got.dtype == torch.float32
        assert rel_err(got, dense_layer(x, weight, terms, m)) < 1e-5
    fast = layer.to("cpu", torch.bfloat16)
    got = fast.add_to((x @ weight.T).bfloat16(), x.bfloat16(), mask)
    assert got.dtype == torch.bfloat16
    assert rel_err(got.float(), dense_layer(x, weight, terms, mask)) < 1e-2


@settings(max_examples=25, deadline=None)
@given(layer_case())
def test_parity_all_ones_is_the_plain_lora_and_zero_removes_it(case):
    x, weight, terms, mask, _ = case
    layer = MaskedLowRank(terms, weight.shape[0])
    base = x @ weight.T
    plain = layer.add_to(base.clone(), x, None)
    assert torch.equal(layer.add_to(base.clone(), x, torch.ones_like(mask)), plain)
    # Zero mask: the same sums with fewer addends, so compared in float64 where 1e-6 is far above rounding.
    x, weight, terms, mask = x.double(), weight.double(), as_double(terms), mask.double()
    base = x @ weight.T
    gone = mask[..., 0] == 0
    rest = [t for t in terms if t.subject != 0]
    expected = MaskedLowRank(rest, weight.shape[0]).add_to(base.clone(), x, mask)
    got = MaskedLowRank(terms, weight.shape[0]).add_to(base.clone(), x, mask)
    torch.testing.assert_close(got[gone], expected[gone], rtol=1e-6, atol=1e-6)


def test_two_matmuls_when_every_term_covers_the_whole_output(monkeypatch):
    terms = [LowRankTerm(l, torch.randn(r, IN), torch.randn(15, r), 0) for l, r in enumerate((2, 3, 4))]
    layer = MaskedLowRank(terms, 15)
    assert layer.down.shape == (9, IN) and len(layer.slices) == 1
    assert layer.owner.tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    calls = []
    for name in ("mm", "matmul", "addmm", "cat"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    real_addmm_ = torch.Tensor.addmm_
    monkeypatch.setattr(torch.Tensor, "addmm_",
                        lambda self, *a, **k: calls.append("addmm_") or real_addmm_(self, *a, **k))
    x = torch.randn(2, 5, IN)
    layer.add_to(torch.zeros(2, 5, 15), x, torch.ones(2, 5, 3))
    assert sorted(calls) == ["addmm_", "mm"]


def test_parts_of_a_fused_output_are_one_up_matmul_unless_held(monkeypatch):
    """q, k, v LoRAs of a qkv layer (two subjects): one `addmm_` for all parts, block-diagonal `U`; a part
    named in `held` keeps its own `U` and `addmm_`."""
    g = torch.Generator().manual_seed(5)
    terms = [LowRankTerm(l, torch.randn(2, IN, generator=g), torch.randn(PART, 2, generator=g), start)
             for l in range(2) for start, _ in LAYOUTS[21]]
    calls = []
    real_addmm_ = torch.Tensor.addmm_
    monkeypatch.setattr(torch.Tensor, "addmm_",
                        lambda self, *a, **k: calls.append(tuple(self.shape)) or real_addmm_(self, *a, **k))
    x, mask = torch.randn(2, 5, IN, generator=g), torch.rand(2, 5, 2, generator=g).round()
    expected = dense_layer(x, torch.zeros(21, IN), terms, mask)
    packed, kept = MaskedLowRank(terms, 21), MaskedLowRank(terms, 21, [(PART, 2 * PART)])
    assert [(s.start, s.stop, s.up.shape) for s in packed.slices] == [(0, 21, (21, 12))]
    assert [(s.start, s.stop) for s in kept.slices] == [(PART, 2 * PART), (0, 21)]
    assert torch.count_nonzero(packed.slices[0].up) == 3 * PART * 4
    for layer, launches in ((packed, [(10, 21)]), (kept, [(10, PART), (10, 21)])):
        calls.clear()
        assert rel_err(layer.add_to(torch.zeros(2, 5, 21), x, mask), expected) < 1e-5
        assert calls == launches


def test_pooled_input_is_unmasked_and_matches_the_reference():
    g = torch.Generator().manual_seed(1)
    terms = [LowRankTerm(0, torch.randn(3, IN, generator=g), torch.randn(PART, 3, generator=g), PART),
             DenseTerm(1, torch.randn(21, IN, generator=g), 0)]
    layer = MaskedLowRank(terms, 21)
    x, weight = torch.randn(4, IN, generator=g), torch.randn(21, IN, generator=g)
    got = layer.add_to(x @ weight.T, x, None)
    assert rel_err(got, dense_layer(x[:, None], weight, terms, None)[:, 0]) < 1e-5
    with pytest.raises(ValueError, match="pooled input"):
        layer.add_to(x @ weight.T, x, torch.ones(4, 1, 2))


def test_non_contiguous_output_is_handled():
    terms = [LowRankTerm(0, torch.randn(2, IN), torch.randn(15, 2), 0)]
    x = torch.randn(3, 4, IN)
    y = torch.randn(4, 3, 15).transpose(0, 1)
    got = MaskedLowRank(terms, 15).add_to(y, x, None)
    torch.testing.assert_close(got, y + x @ (terms[0].up @ terms[0].down).T)


def test_slices_and_calls_are_validated():
    with pytest.raises(ValueError, match="outside 6 features"):
        MaskedLowRank([LowRankTerm(0, torch.zeros(2, 4), torch.zeros(4, 2), 4)], 6)
    with pytest.raises(ValueError, match="input size"):
        MaskedLowRank([LowRankTerm(0, torch.zeros(2, 4), torch.zeros(4, 2), 0), DenseTerm(1, torch.zeros(4, 5), 0)], 6)
    with pytest.raises(ValueError, match="disagree on the rank"):
        MaskedLowRank([LowRankTerm(0, torch.zeros(2, 4), torch.zeros(4, 3), 0)], 6)
    layer = MaskedLowRank([LowRankTerm(2, torch.zeros(2, 4), torch.zeros(6, 2), 0)], 6)
    x = torch.zeros(1, 3, 4)
    with pytest.raises(ValueError, match="the terms use 3"):
        layer.add_to(torch.zeros(1, 3, 6), x, torch.ones(1, 3, 2))
    with pytest.raises(ValueError, match="must be \\[B, T, subjects\\]"):
        layer.add_to(torch.zeros(1, 3, 6), x, torch.ones(1, 4, 3))
    with pytest.raises(ValueError, match="does not match"):
        layer.add_to(torch.zeros(1, 3, 5), x, None)


def test_rank_mask_is_gathered_once_per_rank_layout_and_reused(monkeypatch):
    g = torch.Generator().manual_seed(3)
    same = [MaskedLowRank([LowRankTerm(l, torch.randn(2, IN, generator=g), torch.randn(15, 2, generator=g), 0)
                           for l in range(2)], 15) for _ in range(2)]
    other = MaskedLowRank([LowRankTerm(1, torch.randn(3, IN, generator=g), torch.randn(15, 3, generator=g), 0)], 15)
    x, mask = torch.randn(2, 5, IN, generator=g), (torch.rand(2, 5, 2, generator=g) > 0.5).float()
    expected = [layer.add_to(torch.zeros(2, 5, 15), x, mask) for layer in (*same, other)]
    gathers = []
    real = torch.Tensor.index_select
    monkeypatch.setattr(torch.Tensor, "index_select", lambda self, *a: gathers.append(a) or real(self, *a))
    memo = {}
    got = [layer.add_to(torch.zeros(2, 5, 15), x, mask, memo) for layer in (*same, other, *same)]
    assert len(gathers) == 2 and len(memo) == 2   # one per rank layout, not one per layer call
    for g_, e in zip(got, expected + expected[:2]):
        assert torch.equal(g_, e)


def test_holding_a_slice_leaves_exactly_its_term_to_the_consumer():
    """`add_to_holding` adds every slice but the one over exactly `columns`; that slice's `(h, up)` adds
    the rest, so holding and adding later equals adding now. Columns no slice matches hold nothing."""
    g = torch.Generator().manual_seed(3)
    mlp = (3 * PART, 3 * PART + MLP)
    terms = [LowRankTerm(0, torch.randn(2, IN, generator=g), torch.randn(3 * PART + MLP, 2, generator=g), 0)]
    terms += [LowRankTerm(1, torch.randn(3, IN, generator=g), torch.randn(stop - start, 3, generator=g), start)
              for start, stop in LAYOUTS[3 * PART + MLP]]
    layer = MaskedLowRank(terms, 3 * PART + MLP, [mlp])
    x, mask = torch.randn(2, 5, IN, generator=g), torch.rand(2, 5, 2, generator=g).round()
    base = torch.randn(2, 5, 3 * PART + MLP, generator=g)
    expected = layer.add_to(base.clone(), x, mask)
    y, ((h, up),) = layer.add_to_holding(base.clone(), x, mask, None, (mlp,))
    assert h.shape == (10, 3) and up.shape == (MLP, 3)
    assert not torch.allclose(y[..., mlp[0]:], expected[..., mlp[0]:])
    y[..., mlp[0]:] += (h @ up.t()).view(2, 5, MLP)
    torch.testing.assert_close(y, expected)
    y, held = layer.add_to_holding(base.clone(), x, mask, None, ((3 * PART, 3 * PART + 1),))
    assert held == (None,)
    torch.testing.assert_close(y, expected)
    y, held = MaskedLowRank(terms, 3 * PART + MLP).add_to_holding(base.clone(), x, mask, None, (mlp,))
    assert held == (None,)   # not kept out of the packed slice when built: nothing to hold
    torch.testing.assert_close(y, expected)
