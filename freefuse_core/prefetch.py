"""Each layer's LoRA terms in pinned host memory, copied to the GPU just ahead of the layer.

Two rank-32 LoRAs on every linear layer of FLUX.1-dev hold about 0.8 GiB. Kept on the GPU for a
whole run, that is 0.8 GiB more than a merged-LoRA run needs. Here each layer's terms are one flat
host buffer (pinned for CUDA). When layer `j` is called, the next `window` layers of the model's
call order are copied to the device on a side stream:

    staged after the call of layer j  =  { order[(j + 1) % n], ..., order[(j + window) % n] }

The order is learnt as layers are first called (it wraps round into the next evaluation). The
copies overlap the compute, and at most `window + 1` layers' terms are on the device at once. A
layer waits on its copy's event, and the copy is handed to the compute stream with
`record_stream`, so the allocator reuses that memory only after the layer's kernels have run.
Off CUDA the copy is a plain synchronous `to(device)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .lowrank import MaskedLowRank


@dataclass(frozen=True)
class _Staged:
    lowrank: MaskedLowRank   # views into `flat`
    flat: torch.Tensor       # the device copy of one layer's host buffer
    event: object            # torch.cuda.Event recorded after the copy; None off CUDA


class Prefetcher:
    """Hands out device copies of each layer's `MaskedLowRank`, staged `window` layers ahead."""

    def __init__(self, layers: dict[str, MaskedLowRank], window: int = 8):
        if window < 1:
            raise ValueError(f"the prefetch window must be at least 1 layer; got {window}")
        self.layers = layers
        self.window = window
        self.order: list[str] = []
        self.index: dict[str, int] = {}
        self.host: dict[tuple[str, torch.dtype, bool], torch.Tensor] = {}
        self.owner: dict[tuple[str, torch.device], torch.Tensor] = {}
        self.staged: dict[tuple[str, torch.device, torch.dtype], _Staged] = {}
        self.streams: dict[torch.device, object] = {}

    def fetch(self, path: str, device: torch.device, dtype: torch.dtype) -> MaskedLowRank:
        """Layer `path`'s terms on `device` in `dtype`, ready for the current stream."""
        if path not in self.index:
            self.index[path] = len(self.order)
            self.order.append(path)
        staged = self.staged.pop((path, device, dtype), None) or self._stage(path, device, dtype)
        if staged.event is not None:
            current = torch.cuda.current_stream(device)
            current.wait_event(staged.event)
            staged.flat.record_stream(current)
        here, count = self.index[path], len(self.order)
        for ahead in range(1, min(self.window, count - 1) + 1):
            key = (self.order[(here + ahead) % count], device, dtype)
            if key not in self.staged:
                self.staged[key] = self._stage(*key)
        return staged.lowrank

    def clear(self) -> None:
        """Drops every staged device copy (the host buffers and the learnt order stay)."""
        self.staged.clear()

    def _stage(self, path: str, device: torch.device, dtype: torch.dtype) -> _Staged:
        template = self.layers[path]
        cuda = device.type == "cuda"
        host = self._host(path, dtype, pin=cuda)
        owner = self.owner.get((path, device))
        if owner is None:
            owner = self.owner[(path, device)] = template.owner.to(device)
        if not cuda:
            flat = host.to(device, copy=True)
            return _Staged(_unflatten(template, flat, owner), flat, None)
        stream = self.streams.get(device)
        if stream is None:
            stream = self.streams[device] = torch.cuda.Stream(device)
        with torch.cuda.stream(stream):
            flat = host.to(device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        return _Staged(_unflatten(template, flat, owner), flat, event)

    def _host(self, path: str, dtype: torch.dtype, pin: bool) -> torch.Tensor:
        key = (path, dtype, pin)
        if key not in self.host:
            flat = torch.cat([f.detach().to("cpu", dtype).reshape(-1) for f in self.layers[path].floats()])
            self.host[key] = flat.pin_memory() if pin else flat
        return self.host[key]


def _unflatten(template: MaskedLowRank, flat: torch.Tensor, owner: torch.Tensor) -> MaskedLowRank:
    shapes = [f.shape for f in template.floats()]
    parts = flat.split([s.numel() for s in shapes])
    return template.with_floats([p.view(s) for p, s in zip(parts, shapes)], owner)
