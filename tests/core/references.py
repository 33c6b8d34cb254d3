"""Plain, dense reference implementations for the core tests (full attention matrices)."""
import math

import torch


def dense_attention(q, k, txt_len, n):
    """Head-averaged softmax over image keys for every query row: [B, L, N] from the full [L, L] logits."""
    logits = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    image = logits[..., txt_len:txt_len + n]
    return image.softmax(-1).mean(1)


def dense_subject_maps(q, k, txt_len, grid, token_sets, top_p=0.01, sinks=True):
    h, w = grid
    n = h * w
    attn = dense_attention(q, k, txt_len, n)
    top = max(1, math.floor(n * top_p))
    edge = torch.zeros(h, w, dtype=torch.bool)
    edge[0] = edge[-1] = True
    edge[:, 0] = edge[:, -1] = True
    edge = edge.flatten()
    out = torch.zeros(q.shape[0], len(token_sets), n, dtype=torch.float64)
    for b in range(q.shape[0]):
        for s, tokens in enumerate(token_sets):
            rows = []
            for t in tokens:
                row = attn[b, t].clone()
                if sinks:
                    tau = torch.sort(row, descending=True).values[top - 1]
                    row[(row >= tau) & edge] = 0
                    row = row / row.sum()
                rows.append(row)
            m = torch.stack(rows).mean(0)
            salient = torch.sort(m, descending=True).indices[:top]
            out[b, s] = attn[b, txt_len + salient].mean(0)
    return out


def dense_layer(x, weight, terms, mask):
    """Per token: x @ (W + sum_l F_l dW_l)^T with every dW materialised."""
    out = torch.zeros(*x.shape[:-1], weight.shape[0], dtype=torch.float64)
    x = x.double()
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            w = weight.double().clone()
            for term in terms:
                dw = term.up.double() @ term.down.double() if hasattr(term, "down") else term.delta.double()
                f = 1.0 if mask is None else float(mask[b, t, term.subject])
                w[term.out_start:term.out_start + dw.shape[0]] += f * dw
            out[b, t] = w @ x[b, t]
    return out


def cell_majority(owner, n, grid, patch=16):
    """Per token cell, pixel by pixel: the subject owning most of the cell's pixels inside the image; a cell
    wholly outside counts its pixels at the nearest inside pixel (edge padding). Ties: the lowest index."""
    height, width = owner.shape
    winners = []
    for gy in range(grid[0]):
        for gx in range(grid[1]):
            cell = [(y, x) for y in range(gy * patch, (gy + 1) * patch) for x in range(gx * patch, (gx + 1) * patch)]
            pixels = [(y, x) for y, x in cell if y < height and x < width]
            pixels = pixels or [(min(y, height - 1), min(x, width - 1)) for y, x in cell]
            counts = [sum(int(owner[y, x]) == s for y, x in pixels) for s in range(n)]
            winners.append(max(range(n), key=lambda s: (counts[s], -s)))
    return torch.nn.functional.one_hot(torch.tensor(winners), n).float()
