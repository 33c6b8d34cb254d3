import pytest
import torch

from freefuse_core import LowRankTerm, MaskedLowRank, Prefetcher

IN, OUT = 6, 9


def layers(count: int) -> dict[str, MaskedLowRank]:
    g = torch.Generator().manual_seed(count)
    made = {}
    for i in range(count):
        terms = [LowRankTerm(l, torch.randn(2 + l, IN, generator=g), torch.randn(OUT // 3, 2 + l, generator=g),
                             part * (OUT // 3)) for l in range(2) for part in range(3)]
        made[f"block.{i}"] = MaskedLowRank(terms, OUT)
    return made


def test_fetched_terms_equal_the_resident_cast_and_are_copies():
    held = layers(5)
    prefetch = Prefetcher(held, window=2)
    g = torch.Generator().manual_seed(1)
    x, mask = torch.randn(2, 4, IN, generator=g), (torch.rand(2, 4, 2, generator=g) > 0.5).float()
    for _ in range(3):
        for path, lowrank in held.items():
            fetched = prefetch.fetch(path, torch.device("cpu"), torch.float64)
            resident = lowrank.to("cpu", torch.float64)
            assert torch.equal(fetched.add_to(torch.zeros(2, 4, OUT, dtype=torch.float64), x.double(), mask),
                               resident.add_to(torch.zeros(2, 4, OUT, dtype=torch.float64), x.double(), mask))
            host = prefetch.host[(path, torch.float64, False)]
            assert all(f.data_ptr() != host.data_ptr() for f in fetched.floats())


def test_at_most_window_layers_are_staged_and_they_are_the_next_ones():
    held = layers(6)
    prefetch = Prefetcher(held, window=3)
    paths = list(held)
    for path in paths:  # first evaluation: the order is being learnt
        prefetch.fetch(path, torch.device("cpu"), torch.float32)
        assert len(prefetch.staged) <= 3
    assert prefetch.order == paths
    assert {key[0] for key in prefetch.staged} == set(paths[:3])  # wrapped round to the next evaluation
    for i, path in enumerate(paths):
        prefetch.fetch(path, torch.device("cpu"), torch.float32)
        assert {key[0] for key in prefetch.staged} == {paths[(i + k) % 6] for k in (1, 2, 3)}
    prefetch.clear()
    assert not prefetch.staged


def test_a_window_below_one_layer_is_refused():
    with pytest.raises(ValueError, match="at least 1 layer"):
        Prefetcher(layers(1), window=0)
