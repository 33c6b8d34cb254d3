"""Masked low-rank LoRA terms of one linear layer (Eq. 1).

`y = W x + sum_l s_l F_l(token) B_l A_l x`. Since `F_l` is one scalar per token,
`F_l (B_l A_l x) = B_l (F_l A_l x)`: the mask multiplies the rank-sized intermediate.
Fast path: every LoRA's `A` stacked into one `[R, in]` matrix (one matmul), the mask gathered to
`[.., R]` by each rank row's subject, then one matmul for the up projections of all output slices
(Flux's `qkv`: q, k, v thirds; `linear1`: q, k, v, MLP-in) with their `s B` packed block-diagonally
into one `[columns, R]` matrix (zeros where a slice's ranks do not reach a column):

    y[:, c0:c1] += h U^T,    U[c, r] = s B_slice(r)[c - start(slice(r)), r - first rank(slice(r))]

A slice named in `held` (the columns an op after the layer reads alone) keeps its own `U` and rank
range, so `add_to_holding` can hand that term to the op instead (`freefuse_core.fused`).
Already materialised deltas (LoHa, LoKr) are `DenseTerm`s: `F_l (dW_l x)`.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LowRankTerm:
    subject: int          # the mask column this term uses
    down: torch.Tensor    # A [r, in]
    up: torch.Tensor      # s B [out_slice, r], strength and alpha/rank folded in
    out_start: int


@dataclass(frozen=True)
class DenseTerm:
    subject: int
    delta: torch.Tensor   # s dW [out_slice, in]
    out_start: int


@dataclass(frozen=True)
class _Slice:
    start: int
    stop: int
    ranks: slice          # the rank rows of the stacked A feeding this slice
    up: torch.Tensor      # [stop - start, rank rows]


class MaskedLowRank:
    """All LoRA terms acting on one linear layer, stacked once for the fast path."""

    def __init__(self, terms: Sequence[LowRankTerm | DenseTerm], out_features: int,
                 held: Sequence[tuple[int, int]] = ()):
        self.terms = tuple(terms)
        self.out_features = out_features
        _validate(self.terms, out_features)
        low = sorted((t for t in self.terms if isinstance(t, LowRankTerm)), key=lambda t: (t.out_start, t.up.shape[0]))
        self.dense = tuple(t for t in self.terms if isinstance(t, DenseTerm))
        groups = _groups(low)
        kept = [(start, rows, group) for (start, rows), group in groups if (start, start + rows) in held]
        packed = [(start, rows, group) for (start, rows), group in groups if (start, start + rows) not in held]
        order = [t for *_, group in kept + packed for t in group]
        self.down = torch.cat([t.down for t in order]) if order else None
        self.owner = torch.tensor([t.subject for t in order for _ in range(t.down.shape[0])], dtype=torch.long)
        self.owner_key = tuple(self.owner.tolist())
        self.subjects = 1 + max((t.subject for t in self.terms), default=-1)
        slices, rank = [], 0
        for start, rows, group in kept:
            width = sum(t.down.shape[0] for t in group)
            up = torch.cat([t.up for t in group], dim=1)
            slices.append(_Slice(start, start + rows, slice(rank, rank + width), up))
            rank += width
        if packed:
            slices.append(_packed_slice(packed, rank))
        self.slices = tuple(slices)
        self._prepare()

    def _prepare(self) -> None:
        """What each call reads, worked out once: the rank layout's number (the memo's key), each slice's
        `U` and `U^T` views and whether its columns are the layer's whole output, and the per-`held_columns` plans."""
        self.layout = _LAYOUTS.setdefault(self.owner_key, len(_LAYOUTS))
        single = len(self.slices) == 1   # its rank input is all of h: no column view to take
        self.down_t = None if self.down is None else self.down.t()
        self.steps = tuple((s.start, s.stop, None if single else s.ranks, s.up, s.up.t(),
                            (s.start, s.stop) == (0, self.out_features)) for s in self.slices)
        self.plans: dict[tuple, tuple] = {}

    def to(self, device, dtype) -> MaskedLowRank:
        """A copy with every tensor on `device` in `dtype` (the owner index stays int64)."""
        return self.with_floats([f.to(device, dtype) for f in self.floats()], self.owner.to(device))

    def floats(self) -> tuple[torch.Tensor, ...]:
        """The floating-point tensors, in the order `with_floats` takes them back."""
        down = () if self.down is None else (self.down,)
        return (*down, *(s.up for s in self.slices), *(t.delta for t in self.dense))

    def with_floats(self, floats, owner: torch.Tensor) -> MaskedLowRank:
        """The same terms over other tensors of the same shapes (another device, dtype or storage)."""
        floats = list(floats)
        moved = object.__new__(MaskedLowRank)
        moved.terms, moved.out_features, moved.subjects = self.terms, self.out_features, self.subjects
        moved.owner_key = self.owner_key
        moved.down = None if self.down is None else floats.pop(0)
        moved.slices = tuple(_Slice(s.start, s.stop, s.ranks, floats.pop(0)) for s in self.slices)
        moved.dense = tuple(DenseTerm(t.subject, floats.pop(0), t.out_start) for t in self.dense)
        moved.owner = owner
        moved._prepare()
        return moved

    def add_to(self, y: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None,
               memo: dict | None = None) -> torch.Tensor:
        """`y + sum_l F_l B_l A_l x`, added in place into `y` (made contiguous first if it is not).

        x: `[..., T, in]` or pooled `[B, in]`; y: the base output `[..., out_features]`; mask: `[B, T, S]`
        (column `subject` of each term) or None (all ones, the only choice for pooled inputs).
        The packed slices are one `addmm_` straight into their columns of `y` (the GEMM's own `C += A B`),
        so no output-sized intermediate is written and read back; each kept slice is one more. `memo`, kept
        by the caller for one mask, holds the mask gathered to the rank rows, shared by every layer with the
        same rank layout.
        """
        return self.add_to_holding(y, x, mask, memo, ())[0]

    def add_to_holding(self, y: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None, memo: dict | None,
                       held_columns: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, tuple]:
        """`add_to`, except each low-rank slice over exactly one of `held_columns` (start, stop): returns
        `(y, held)`, `held[i]` = `(h, up)` of the slice over `held_columns[i]` (its masked rank input
        `[tokens, r]` and `s B` `[columns, r]`), for a consumer that adds `h up^T` itself; None where no
        slice covers exactly those columns (their terms, if any, are in `y`)."""
        self._check_call(y, x, mask)
        y = y if y.is_contiguous() else y.contiguous()
        y2 = y.view(-1, self.out_features)
        x2 = x.reshape(-1, x.shape[-1])
        held = [None] * len(held_columns)
        if self.down is not None:
            h = torch.mm(x2, self.down_t)
            if mask is not None:
                h.mul_(self._rank_mask(mask, h.dtype, memo))
            for slot, (start, stop, ranks, up, up_t, whole) in zip(self._plan(held_columns), self.steps):
                part = h if ranks is None else h[:, ranks]
                if slot is not None:
                    held[slot] = (part, up)
                else:
                    (y2 if whole else y2[:, start:stop]).addmm_(part, up_t)
        for t in self.dense:
            delta = torch.mm(x2, t.delta.t())
            if mask is not None:
                delta.mul_(mask.reshape(-1, mask.shape[-1])[:, t.subject:t.subject + 1].to(delta.dtype))
            y2[:, t.out_start:t.out_start + delta.shape[-1]].add_(delta)
        return y, tuple(held)

    def _plan(self, held_columns: Sequence[tuple[int, int]]) -> tuple:
        """Per slice, the index in `held_columns` of the columns it covers exactly, else None."""
        key = tuple(held_columns)
        plan = self.plans.get(key)
        if plan is None:
            plan = self.plans[key] = tuple(key.index((s.start, s.stop)) if (s.start, s.stop) in key else None
                                           for s in self.slices)
        return plan

    def _rank_mask(self, mask: torch.Tensor, dtype: torch.dtype, memo: dict | None) -> torch.Tensor:
        """`[tokens, R]`: each rank row's column of the mask `[B, T, S]`, its tokens flattened."""
        key = (self.layout, mask.device, dtype)
        gathered = None if memo is None else memo.get(key)
        if gathered is None:
            gathered = mask.reshape(-1, mask.shape[-1]).to(dtype).index_select(-1, self.owner)
            if memo is not None:
                memo[key] = gathered
        return gathered

    def _check_call(self, y: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None):
        if y.shape[:-1] != x.shape[:-1] or y.shape[-1] != self.out_features:
            raise ValueError(f"output {tuple(y.shape)} does not match input {tuple(x.shape)} and "
                             f"{self.out_features} features")
        if mask is None:
            return
        if x.ndim < 3:
            raise ValueError(f"a pooled input {tuple(x.shape)} has no token axis and cannot be masked")
        if mask.ndim != 3 or mask.shape[1] != x.shape[-2] or mask.shape[0] * mask.shape[1] != x.numel() // x.shape[-1]:
            raise ValueError(f"mask {tuple(mask.shape)} must be [B, T, subjects] for the input {tuple(x.shape)}")
        if mask.shape[-1] < self.subjects:
            raise ValueError(f"mask has {mask.shape[-1]} subject columns; the terms use {self.subjects}")


_LAYOUTS: dict[tuple[int, ...], int] = {}   # rank layout (each rank row's subject) -> its number, a fast memo key


def _validate(terms: Sequence[LowRankTerm | DenseTerm], out_features: int):
    """Construction-time checks: one input size, ranks that agree, slices inside the output."""
    ins = set()
    for t in terms:
        weights = (t.down, t.up) if isinstance(t, LowRankTerm) else (t.delta,)
        if any(w.ndim != 2 for w in weights):
            raise ValueError(f"LoRA weights must be matrices; got shapes {[tuple(w.shape) for w in weights]}")
        if isinstance(t, LowRankTerm) and t.up.shape[1] != t.down.shape[0]:
            raise ValueError(f"up {tuple(t.up.shape)} and down {tuple(t.down.shape)} disagree on the rank")
        if t.subject < 0:
            raise ValueError(f"a term's subject (mask column) must be >= 0; got {t.subject}")
        rows = weights[-1].shape[0]
        if t.out_start < 0 or t.out_start + rows > out_features:
            raise ValueError(f"output slice [{t.out_start}, {t.out_start + rows}) outside {out_features} features")
        ins.add(weights[0].shape[1])
    if len(ins) > 1:
        raise ValueError(f"LoRA terms of one layer disagree on the input size: {sorted(ins)}")


def _packed_slice(packed, first_rank: int) -> _Slice:
    """One slice over the columns of every `(start, rows, terms)` group in `packed`, their ranks from
    `first_rank` on in order, `U` block-diagonal (a single group: its own `U`, no zeros)."""
    start = min(s for s, _, _ in packed)
    stop = max(s + rows for s, rows, _ in packed)
    ups = [(s - start, torch.cat([t.up for t in group], dim=1)) for s, _, group in packed]
    width = sum(up.shape[1] for _, up in ups)
    if len(ups) == 1:
        return _Slice(start, stop, slice(first_rank, first_rank + width), ups[0][1])
    dtype = functools.reduce(torch.promote_types, (up.dtype for _, up in ups))
    up = torch.zeros(stop - start, width, dtype=dtype, device=ups[0][1].device)
    rank = 0
    for offset, part in ups:
        up[offset:offset + part.shape[0], rank:rank + part.shape[1]] = part
        rank += part.shape[1]
    return _Slice(start, stop, slice(first_rank, first_rank + width), up)


def _groups(terms: Sequence[LowRankTerm]):
    """Terms grouped by identical output slice, in order of the slice."""
    groups: dict[tuple[int, int], list[LowRankTerm]] = {}
    for t in terms:
        groups.setdefault((t.out_start, t.up.shape[0]), []).append(t)
    return sorted(groups.items())
