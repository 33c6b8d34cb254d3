import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from references import dense_layer

from freefuse_core import DenseTerm, LowRankTerm, MaskedLowRank


@st.composite
def layer_case(draw):
    batch, tokens = draw(st.integers(1, 3)), draw(st.integers(1, 7))
    inp, out = 12, draw(st.sampled_from([9, 15, 21]))   # 21 = 3 x 7 (a fused qkv of width 7)
    loras = draw(st.integers(1, 6))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    terms = []
    for l in range(loras):
        kind = draw(st.sampled_from(["full", "thirds", "dense", "slice"]))
        rank = draw(st.integers(1, 5))
        if kind == "full":
            terms.append(LowRankTerm(l, torch.randn(rank, inp, generator=g), torch.randn(out, rank, generator=g), 0))
        elif kind == "thirds":
            third = out // 3
            for i in range(3):
                terms.append(LowRankTerm(l, torch.randn(rank, inp, generator=g),
                                         torch.randn(third, rank, generator=g), i * third))
        elif kind == "slice":
            start = draw(st.integers(0, out - 2))
            width = draw(st.integers(1, out - start))
            terms.append(LowRankTerm(l, torch.randn(rank, inp, generator=g), torch.randn(width, rank, generator=g), start))
        else:
            terms.append(DenseTerm(l, torch.randn(out, inp, generator=g) * 0.3, 0))
    x = torch.randn(batch, tokens, inp, generator=g)
    weight = torch.randn(out, inp, generator=g)
    mask = (torch.rand(batch, tokens, loras, generator=g) > 0.5).float()
    return x, weight, terms, mask


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@settings(max_examples=30, deadline=None)
@given(layer_case())
def test_fast_path_equals_dense_reference(case):
    x, weight, terms, mask = case
    layer = MaskedLowRank(terms, weight.shape[0])
    for m in (mask, None):
        got = layer.add_to(x @ weight.T, x, m)
        assert rel_err(got, dense_layer(x, weight, terms, m)) < 1e-5
    fast = layer.to("cpu", torch.bfloat16)
    got = fast.add_to((x @ weight.T).bfloat16(), x.bfloat16(), mask)
    assert rel_err(got.float(), dense_layer(x, weight, terms, mask)) < 1e-2


@settings(max_examples=20, deadline=None)
@given(layer_case())
def test_parity_all_ones_is_the_plain_lora_and_zero_removes_it(case):
    x, weight, terms, mask = case
    layer = MaskedLowRank(terms, weight.shape[0])
    base = x @ weight.T
    plain = layer.add_to(base.clone(), x, None)
    assert torch.equal(layer.add_to(base.clone(), x, torch.ones_like(mask)), plain)
    gone = mask[..., 0] == 0
    without = MaskedLowRank([t for t in terms if t.subject != 0], weight.shape[0]) if any(
        t.subject != 0 for t in terms) else None
    got = layer.add_to(base.clone(), x, mask)
    expected = without.add_to(base.clone(), x, mask) if without else base
    torch.testing.assert_close(got[gone], expected[gone], rtol=1e-6, atol=1e-6)


def test_slices_are_validated():
    import pytest
    with pytest.raises(ValueError, match="outside 6 features"):
        MaskedLowRank([LowRankTerm(0, torch.zeros(2, 4), torch.zeros(4, 2), 4)], 6)
    with pytest.raises(ValueError, match="input size"):
        MaskedLowRank([LowRankTerm(0, torch.zeros(2, 4), torch.zeros(4, 2), 0),
                       DenseTerm(1, torch.zeros(4, 5), 0)], 6)
