"""The toy world: scenes of soft-ellipse characters drawn straight into a Flux latent (model space).

A character is a name (a made-up word the T5 tokenizer splits into pieces), an identity vector
`v` (16 latent channels) and a texture: stripes `sin(2 pi f (x cos a + y sin a))` along a second
vector `t`. A scene of n characters at layout slots (left / middle / right) over a background `g`:

    z <- (1 - alpha_c) z + alpha_c (v_c + s_c(p) t_c)  for each character c, from z = g,
    alpha_c(p) = sigmoid(k (1 - r_c(p)))             (r_c: the ellipse radius at p)

The caption names every character at its slot, so a model trained on these scenes must tie each
name's tokens to a region. LoRA characters reuse names of the base roster with a new identity and texture: a
character LoRA teaches a known trigger word a new look, which is what FreeFuse must keep apart.
Pure torch; the metrics read generated latents against the scene's own layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

CHANNELS, SIZE = 16, 32
SYLLABLES = ("zor", "vak", "mir", "alu", "nex", "tho", "quil", "bra", "fen", "dov", "kri", "sel", "umo", "pax",
             "lio", "ryn", "gha", "tez", "obi", "wen")
SLOTS = {1: ((0.5, ""),), 2: ((0.28, " on the left"), (0.72, " on the right")),
         3: ((0.2, " on the left"), (0.5, " in the middle"), (0.8, " on the right"))}
IDENTITY_NORM, TEXTURE_NORM, BACKGROUND_NORM, EDGE = 6.0, 3.0, 2.0, 8.0


@dataclass(frozen=True)
class Character:
    name: str
    identity: torch.Tensor   # [16]
    texture: torch.Tensor    # [16]
    freq: float              # stripe cycles per latent pixel
    angle: float


def _unit(generator, norm: float) -> torch.Tensor:
    v = torch.randn(CHANNELS, generator=generator)
    return v / v.norm() * norm


def _character(name: str, generator) -> Character:
    return Character(name, _unit(generator, IDENTITY_NORM), _unit(generator, TEXTURE_NORM),
                     0.12 + 0.13 * float(torch.rand((), generator=generator)),
                     float(torch.rand((), generator=generator)) * 3.14159)


def roster(seed: int = 0, count: int = 12) -> tuple[Character, ...]:
    """The base characters: distinct two-syllable names, each with its own look."""
    generator = torch.Generator().manual_seed(seed)
    names: list[str] = []
    while len(names) < count:
        a, b = torch.randint(len(SYLLABLES), (2,), generator=generator).tolist()
        name = SYLLABLES[a] + SYLLABLES[b]
        if a != b and name not in names:
            names.append(name)
    return tuple(_character(name, generator) for name in names)


def syllables(name: str) -> set[str]:
    return {s for s in SYLLABLES if s in name}


def lora_characters(base: tuple[Character, ...], seed: int = 1, count: int = 3) -> tuple[Character, ...]:
    """New looks for `count` names of the roster that share no syllable (so no T5 piece either, as
    real trigger words): what each character LoRA teaches."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    chosen: list[Character] = []
    for c in base:
        if len(chosen) < count and not any(syllables(c.name) & syllables(o.name) for o in chosen):
            chosen.append(c)
    return tuple(_character(c.name, generator) for c in chosen)


def caption(names: list[str]) -> str:
    slots = SLOTS[len(names)]
    parts = [name + slot for name, (_, slot) in zip(names, slots)]
    if len(parts) == 1:
        return f"a photo of {parts[0]}"
    return "a photo of " + ", ".join(parts[:-1]) + " and " + parts[-1]


@dataclass(frozen=True)
class Scenes:
    """A batch of scenes, padded to 3 characters (`present` marks the real ones)."""

    characters: list[list[Character]]
    center: torch.Tensor      # [B, 3, 2] x, y in [0, 1]
    radius: torch.Tensor      # [B, 3, 2]
    present: torch.Tensor     # [B, 3] bool
    background: torch.Tensor  # [B, 16]

    @property
    def captions(self) -> list[str]:
        return [caption([c.name for c in cast]) for cast in self.characters]


def scenes(casts: list[list[Character]], generator) -> Scenes:
    """Random placements for the given casts (1-3 characters each, placed at their slots)."""
    batch = len(casts)
    center = torch.zeros(batch, 3, 2)
    radius = torch.ones(batch, 3, 2)
    present = torch.zeros(batch, 3, dtype=torch.bool)
    for i, cast in enumerate(casts):
        n = len(cast)
        jitter = (torch.rand(n, 2, generator=generator) - 0.5) * torch.tensor([0.08, 0.2])
        center[i, :n, 0] = torch.tensor([x for x, _ in SLOTS[n]]) + jitter[:, 0]
        if n == 1:   # a lone character stands anywhere across the middle half
            center[i, 0, 0] = 0.25 + 0.5 * float(torch.rand((), generator=generator))
        center[i, :n, 1] = 0.5 + jitter[:, 1]
        width = {1: 0.22, 2: 0.17, 3: 0.12}[n]
        radius[i, :n, 0] = width * (0.85 + 0.3 * torch.rand(n, generator=generator))
        radius[i, :n, 1] = 0.3 * (0.8 + 0.3 * torch.rand(n, generator=generator))
        present[i, :n] = True
    background = torch.randn(batch, CHANNELS, generator=generator)
    background = background / background.norm(dim=1, keepdim=True) * BACKGROUND_NORM
    return Scenes([list(c) for c in casts], center, radius, present, background)


def _stack(scenes_: Scenes, attr: str) -> torch.Tensor:
    rows = []
    for cast in scenes_.characters:
        values = [getattr(c, attr) for c in cast] + [getattr(cast[0], attr)] * (3 - len(cast))
        rows.append(torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values))
    return torch.stack(rows)


def alphas(center: torch.Tensor, radius: torch.Tensor, present: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """Soft ellipse coverage `[B, 3, size, size]` (0 for padding characters)."""
    axis = (torch.arange(size, dtype=torch.float32, device=center.device) + 0.5) / size
    dx = (axis[None, None, None, :] - center[..., 0, None, None]) / radius[..., 0, None, None]
    dy = (axis[None, None, :, None] - center[..., 1, None, None]) / radius[..., 1, None, None]
    alpha = torch.sigmoid(EDGE * (1 - torch.sqrt(dx ** 2 + dy ** 2)))
    return alpha * present[..., None, None].to(alpha.dtype)


def stripes(freq: torch.Tensor, angle: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """`s_c(p)` for every character: `[B, 3, size, size]`."""
    axis = torch.arange(size, dtype=torch.float32, device=freq.device) + 0.5
    along = (axis[None, None, None, :] * torch.cos(angle)[..., None, None]
             + axis[None, None, :, None] * torch.sin(angle)[..., None, None])
    return torch.sin(2 * torch.pi * freq[..., None, None] * along)


def render(batch: Scenes, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Latents `[B, 16, 32, 32]` in model space and the coverage `[B, 3, 32, 32]` of each character."""
    identity, texture = _stack(batch, "identity").to(device), _stack(batch, "texture").to(device)
    freq, angle = _stack(batch, "freq").float().to(device), _stack(batch, "angle").float().to(device)
    alpha = alphas(batch.center.to(device), batch.radius.to(device), batch.present.to(device))
    wave = stripes(freq, angle)
    z = batch.background.to(device)[:, :, None, None].expand(-1, -1, SIZE, SIZE).clone()
    for c in range(3):
        look = identity[:, c, :, None, None] + wave[:, c, None] * texture[:, c, :, None, None]
        a = alpha[:, c, None]
        z = z * (1 - a) + a * look
    return z, alpha


# --- metrics on generated latents -------------------------------------------------------------


def nominal_regions(n: int, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a generated scene of `n` characters must show each one: the core of the ellipse at its
    slot (`[n, size, size]` bool), and the background well clear of every slot (`[size, size]`)."""
    center = torch.tensor([[x, 0.5] for x, _ in SLOTS[n]])[None]
    radius = torch.tensor([[{1: 0.22, 2: 0.17, 3: 0.12}[n], 0.3]] * n)[None]
    present = torch.ones(1, n, dtype=torch.bool)
    inside = alphas(center, radius * 0.6, present, size)[0] > 0.5
    outside = alphas(center, radius * 1.5, present, size)[0].amax(0) < 0.05
    return inside, outside


def region_means(z: torch.Tensor, inside: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
    """Per region, the mean latent inside it minus the background's mean: `[B, n, 16]`."""
    inside, outside = inside.to(z.dtype), outside.to(z.dtype)
    background = (z * outside).sum((-2, -1)) / outside.sum().clamp(min=1)
    means = torch.einsum("bchw,khw->bkc", z, inside) / inside.sum((-2, -1))[None, :, None].clamp(min=1)
    return means - background[:, None]


def identity_scores(foreground: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each region's foreground `[B, 3, 16]` with each candidate identity `[K, 16]`."""
    f = torch.nn.functional.normalize(foreground, dim=-1)
    return f @ torch.nn.functional.normalize(candidates, dim=-1).t()


def mix_weights(vectors: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Least-squares weights of `vectors [..., 16]` on the rows of `basis [k, 16]`, clipped at 0."""
    return (vectors @ torch.linalg.pinv(basis)).clamp(min=0)


def leak(weights: torch.Tensor, own: int) -> torch.Tensor:
    """The share of the other characters in non-negative weights `[..., k]`: `1 - w_own / sum w`
    (0: only its own look; 0.5 with two: a full blend); 0.5 where there is neither."""
    total = weights.sum(-1)
    share = 1 - weights[..., own] / total.clamp(min=1e-6)
    return torch.where(total > 1e-6, share, torch.full_like(total, 0.5))


def texture_weights(z: torch.Tensor, inside: torch.Tensor, looks: list[Character]) -> torch.Tensor:
    """How much of each character's stripe pattern `s(p) t` a region `[size, size]` holds: `[B, k]`."""
    mask = inside.to(z.dtype)
    centred = z - (z * mask).sum((-2, -1), keepdim=True) / mask.sum().clamp(min=1)
    out = []
    for look in looks:
        wave = stripes(torch.tensor([[look.freq]]), torch.tensor([[look.angle]]), z.shape[-1])[0, 0]
        pattern = wave[None, None] * look.texture[None, :, None, None]
        num = (centred * pattern * mask).sum((1, 2, 3))
        den = (pattern ** 2 * mask).sum((1, 2, 3)).clamp(min=1e-6)
        out.append((num / den).clamp(min=0))
    return torch.stack(out, dim=-1)


def layout_masks(n: int, grid: int = SIZE // 2) -> torch.Tensor:
    """The ground-truth layout on the token grid: `[n, grid, grid]`, the image split at the slots'
    midpoints (left / right halves, or thirds)."""
    xs = torch.tensor([x for x, _ in SLOTS[n]])
    cuts = (xs[1:] + xs[:-1]) / 2
    axis = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    owner = torch.bucketize(axis, cuts)
    return (owner[None, None, :] == torch.arange(n)[:, None, None]).expand(n, grid, grid).float()
