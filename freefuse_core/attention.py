"""Subject maps from one joint-attention call (Eq. 5-10), row by row, never `N x N`.

With post-RoPE `q, k` of shape `[B, H, L, D]`, text tokens `0..T-1` first and the image tokens
`T..T+N-1` of an `h x w` grid after them:

- Eq. 5, cross-attention of text token `t`: `A[t, j] = softmax_j(q_t · k_j / sqrt(D))` over image
  keys `j` only, per head, then averaged over heads (decision).
- Eq. 6-7, sinks: `tau` = the `floor(N p)`-th largest value of the row (`p` = 1 %); entries
  `>= tau` on the border `E` of the grid are zeroed and the row renormalised to sum 1.
- Eq. 8, subject map: `M_l = mean_{t in I_l} A~[t]`.
- Eq. 9, salient tokens: `T_l` = the `max(1, floor(N p))` image tokens with the largest `M_l`.
- Eq. 10, self-attention map: `S_l = mean_{i in T_l} softmax_j(q_i · k_j / sqrt(D))` over image keys,
  head-averaged. Only the `|T_l|` needed rows are computed.
Rows go through in chunks of at most `chunk` query rows, and never more than `(N - 1) // heads`, so
the per-head logits of a chunk (`heads x rows x N`) stay below `N x N` elements. Every batch item
is independent. All arithmetic in float32 (each chunk upcast).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _rows(q: torch.Tensor, k_img: torch.Tensor, rows: torch.Tensor, chunk: int) -> torch.Tensor:
    """Head-averaged softmax rows over image keys for query positions `rows` of one item.

    q: [H, L, D], k_img: [H, N, D], rows: [R] -> [R, N] float32.
    """
    heads, n, dim = k_img.shape
    step = max(1, min(chunk, (n - 1) // heads))
    keys = k_img.transpose(-1, -2).float()
    out = torch.empty(rows.numel(), n, dtype=torch.float32, device=q.device)
    for start in range(0, rows.numel(), step):
        part = q[:, rows[start:start + step]].float() / math.sqrt(dim)
        out[start:start + step] = torch.matmul(part, keys).softmax(dim=-1).mean(dim=0)
    return out


def border(grid: tuple[int, int], device=None) -> torch.Tensor:
    """`E`: a bool vector over the `h*w` image tokens, true on the grid's outer rows and columns."""
    h, w = grid
    edge = torch.zeros(h, w, dtype=torch.bool, device=device)
    edge[0], edge[-1], edge[:, 0], edge[:, -1] = True, True, True, True
    return edge.flatten()


def top_count(n: int, top_p: float) -> int:
    """`max(1, floor(N p))`: how many entries count as the top of a row (Eq. 6 and 9)."""
    return max(1, math.floor(n * top_p))


def cross_rows(q, k, txt_len: int, n_img: int, rows: Sequence[int], chunk: int = 1024) -> torch.Tensor:
    """Eq. 5 for text rows `rows`: `[B, len(rows), N]`, head-averaged."""
    index = torch.as_tensor(list(rows), dtype=torch.long, device=q.device)
    k_img = k[:, :, txt_len:txt_len + n_img]
    return torch.stack([_rows(q[b], k_img[b], index, chunk) for b in range(q.shape[0])])


def suppress_sinks(rows: torch.Tensor, grid: tuple[int, int], top_p: float = 0.01) -> torch.Tensor:
    """Eq. 6-7: zero the top-`p` entries that lie on the grid border, renormalise each row."""
    n = rows.shape[-1]
    tau = rows.topk(top_count(n, top_p), dim=-1).values[..., -1:]
    sink = (rows >= tau) & border(grid, rows.device)
    cleaned = rows.masked_fill(sink, 0.0)
    total = cleaned.sum(dim=-1, keepdim=True)
    if bool((total <= 0).any()):
        raise ValueError("a text token attends only to border sinks; no attention is left to build a mask from")
    return cleaned / total


def salient_tokens(maps: torch.Tensor, top_p: float = 0.01) -> torch.Tensor:
    """Eq. 9: indices of the `max(1, floor(N p))` largest entries of each map."""
    return maps.topk(top_count(maps.shape[-1], top_p), dim=-1).indices


def _validate(q, k, txt_len, grid, token_sets, top_p, chunk):
    if q.ndim != 4 or q.shape != k.shape:
        raise ValueError(f"q and k must both be [B, heads, L, D]; got {tuple(q.shape)} and {tuple(k.shape)}")
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"the token grid must be two positive sizes (h, w); got {tuple(grid)}")
    n = grid[0] * grid[1]
    if txt_len < 1 or txt_len + n > q.shape[2]:
        raise ValueError(f"{txt_len} text + {n} image tokens do not fit the sequence of {q.shape[2]}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1]; got {top_p}")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 row; got {chunk}")
    if not token_sets:
        raise ValueError("no subject token sets given")
    for tokens in token_sets:
        if not tokens or any(not 0 <= t < txt_len for t in tokens):
            raise ValueError(f"subject tokens {list(tokens)} must be non-empty text positions below {txt_len}")


def subject_maps(q: torch.Tensor, k: torch.Tensor, txt_len: int, grid: tuple[int, int],
                 token_sets: Sequence[Sequence[int]], top_p: float = 0.01, sink_handling: bool = True,
                 chunk: int = 1024) -> torch.Tensor:
    """Eq. 5-10: the self-attention map `S_l` of every subject, `[B, subjects, N]` float32."""
    _validate(q, k, txt_len, grid, token_sets, top_p, chunk)
    n = grid[0] * grid[1]
    all_rows = sorted({t for tokens in token_sets for t in tokens})
    position = {t: i for i, t in enumerate(all_rows)}
    cross = cross_rows(q, k, txt_len, n, all_rows, chunk)
    if sink_handling:
        cross = suppress_sinks(cross, grid, top_p)
    maps = torch.stack([cross[:, [position[t] for t in tokens]].mean(dim=1) for tokens in token_sets], dim=1)
    salient = salient_tokens(maps, top_p) + txt_len  # [B, S, top] query positions of image tokens
    k_img = k[:, :, txt_len:txt_len + n]
    out = torch.empty_like(maps)
    for b in range(q.shape[0]):
        rows = _rows(q[b], k_img[b], salient[b].flatten(), chunk)
        out[b] = rows.view(len(token_sets), -1, n).mean(dim=1)
    return out
