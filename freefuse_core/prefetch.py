"""Each block's LoRA terms in pinned host memory, copied to the GPU just ahead of the block.

Two rank-32 LoRAs on every linear layer of FLUX.1-dev hold about 0.8 GiB. Kept on the GPU for a
whole run, that is 0.8 GiB more than a merged-LoRA run needs. Here the terms of each group of
layers (`blocks` consecutive transformer blocks, 2 by default, so a step switches groups half as
often; outside the blocks, a top-level module such as `img_in` or `final_layer`) are one flat host
buffer (pinned for CUDA), and the device holds a ring of
`window + 1` buffers, each the size of the largest group. When the first layer of group `g_i` (in
the order the model first called them, wrapping round into the next evaluation) is called:

    ring = { g_i, g_(i+1), ..., g_(i+window) }     (the ones not yet there are copied now)

Copies run on a side stream and overlap the compute. A buffer is overwritten only after the
compute stream has passed the last layer of the group it held (an event recorded when the model
moved on), and a layer's kernels wait for their group's copy (another event). Each layer's
`MaskedLowRank` over a ring buffer is built once and reused, so a layer call costs two dict
lookups. Off CUDA the copies are plain synchronous `copy_`s into the same ring.
"""
from __future__ import annotations

import contextlib

import torch

from .lowrank import MaskedLowRank

BLOCK_LISTS = ("double_blocks", "single_blocks")


def group_of(path: str, blocks: int = 1) -> str:
    """The group of a layer path: its run of `blocks` transformer blocks, named by the first
    (`double_blocks.2` holds blocks 2 and 3 when `blocks` is 2), else its top module."""
    parts = path.split(".")
    if parts[0] not in BLOCK_LISTS:
        return parts[0]
    return f"{parts[0]}.{int(parts[1]) // blocks * blocks}"


class Prefetcher:
    """Hands out device copies of each layer's `MaskedLowRank`, staged `window` groups ahead."""

    def __init__(self, layers: dict[str, MaskedLowRank], window: int = 2, blocks: int = 2):
        if window < 1:
            raise ValueError(f"the prefetch window must be at least 1 group; got {window}")
        if blocks < 1:
            raise ValueError(f"a prefetch group must hold at least 1 block; got {blocks}")
        self.layers = layers
        self.window = window
        self.group = {path: group_of(path, blocks) for path in layers}
        self.members: dict[str, list[str]] = {}
        self.offset: dict[str, int] = {}    # where a layer's floats start in its group's buffer
        self.numel: dict[str, int] = {}     # a group's buffer length
        for path, group in self.group.items():
            self.members.setdefault(group, []).append(path)
            self.offset[path] = self.numel.get(group, 0)
            self.numel[group] = self.offset[path] + sum(f.numel() for f in layers[path].floats())
        self.order: list[str] = []
        self.index: dict[str, int] = {}
        self.host: dict[tuple[str, torch.dtype, bool], torch.Tensor] = {}
        self.rings: dict[tuple[torch.device, torch.dtype], _Ring] = {}

    def fetch(self, path: str, device: torch.device, dtype: torch.dtype) -> MaskedLowRank:
        """Layer `path`'s terms on `device` in `dtype`, ready for the current stream."""
        ring = self.rings.get((device, dtype))
        if ring is None:
            ring = self.rings[(device, dtype)] = _Ring(self.window + 1, max(self.numel.values()), device, dtype)
        group = self.group[path]
        if group != ring.current:
            self._switch(ring, group)
        return ring.lowrank(path, self)

    def clear(self) -> None:
        """Frees the device rings (the host buffers and the learnt order stay)."""
        self.rings.clear()

    def _switch(self, ring: _Ring, group: str) -> None:
        if group not in self.index:
            self.index[group] = len(self.order)
            self.order.append(group)
        here, count = self.index[group], len(self.order)
        ahead = [self.order[(here + k) % count] for k in range(1, min(self.window, count - 1) + 1)]
        compute = ring.leave()
        missing = [wanted for wanted in [group, *ahead] if wanted not in ring.held]
        if missing:
            ring.load([(wanted, self._host(wanted, ring.dtype, ring.cuda)) for wanted in missing],
                      keep={group, *ahead})
        ring.enter(group, compute)

    def _host(self, group: str, dtype: torch.dtype, pin: bool) -> torch.Tensor:
        key = (group, dtype, pin)
        if key not in self.host:
            floats = [f.detach().to("cpu", dtype).reshape(-1) for p in self.members[group]
                      for f in self.layers[p].floats()]
            flat = torch.cat(floats)
            self.host[key] = flat.pin_memory() if pin else flat
        return self.host[key]


class _Ring:
    """`slots` device buffers, which group each holds, and the events that order their reuse (one pair
    per slot, recorded again at each reuse)."""

    def __init__(self, slots: int, numel: int, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype, self.cuda = device, dtype, device.type == "cuda"
        self.buffers = [torch.empty(numel, device=device, dtype=dtype) for _ in range(slots)]
        self.side = torch.cuda.Stream(device) if self.cuda else None
        events = (lambda: [torch.cuda.Event() for _ in range(slots)]) if self.cuda else (lambda: [None] * slots)
        self.ready = events()   # the copy into the slot finished (side stream)
        self.done = events()    # compute finished with the slot's last group (a never-recorded event: no wait)
        self.held: dict[str, int] = {}              # group -> slot
        self.current: str | None = None
        self.views: dict[tuple[str, int], MaskedLowRank] = {}
        self.owners: dict[tuple[int, ...], torch.Tensor] = {}   # one device copy per rank layout

    def leave(self):
        """Marks the compute stream's place after the current group; returns that stream (None off CUDA)."""
        compute = torch.cuda.current_stream(self.device) if self.cuda else None
        if self.current is not None and self.cuda:
            self.done[self.held[self.current]].record(compute)
        self.current = None
        return compute

    def load(self, groups: list[tuple[str, torch.Tensor]], keep: set[str]) -> None:
        """Copies each `(group, host buffer)` into a slot that holds none of `keep`."""
        with torch.cuda.stream(self.side) if self.cuda else contextlib.nullcontext():
            for group, host in groups:
                taken = {self.held[g] for g in keep if g in self.held}
                slot = next(s for s in range(len(self.buffers)) if s not in taken)
                self.held = {g: s for g, s in self.held.items() if s != slot}
                target = self.buffers[slot][:host.numel()]
                if self.cuda:
                    self.side.wait_event(self.done[slot])
                    target.copy_(host, non_blocking=True)
                    self.ready[slot].record(self.side)
                else:
                    target.copy_(host)
                self.held[group] = slot

    def enter(self, group: str, compute) -> None:
        slot = self.held[group]
        if self.cuda:
            compute.wait_event(self.ready[slot])
        self.current = group

    def lowrank(self, path: str, prefetcher: Prefetcher) -> MaskedLowRank:
        slot = self.held[self.current]
        key = (path, slot)
        if key not in self.views:
            self.views[key] = self._view(path, slot, prefetcher)
        return self.views[key]

    def _view(self, path: str, slot: int, prefetcher: Prefetcher) -> MaskedLowRank:
        offset = prefetcher.offset[path]
        template = prefetcher.layers[path]
        if template.owner_key not in self.owners:   # non-blocking: a plain copy would wait for the GPU
            self.owners[template.owner_key] = template.owner.to(self.device, non_blocking=True)
        floats = []
        for f in template.floats():
            floats.append(self.buffers[slot][offset:offset + f.numel()].view(f.shape))
            offset += f.numel()
        return template.with_floats(floats, self.owners[template.owner_key])
