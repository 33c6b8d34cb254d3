"""Masked LoRA outputs inside the model's own linear layers (Eq. 1, section 3.2).

At every LoRA-targeted layer `y = W x + sum_l s_l F_l(token) B_l A_l x`. The base `W x` is the
layer's own forward (ComfyUI's casting, fp8 and low-VRAM paths untouched); the sum is
`freefuse_core.MaskedLowRank`. The forward is replaced through the ModelPatcher's injection
lifecycle: `inject` when the patcher loads the model (fully or partially), `eject` when it unloads,
so base weights never change and nothing stays on the module. On CUDA the LoRA tensors stay in
pinned host memory and reach the GPU two-block groups at a time, up to two groups ahead of use
(`freefuse_core.Prefetcher`), so a run holds only those blocks' terms on the GPU, not every layer's
(a ring of three groups' buffers, kept from one sampler call to the next while the model stays loaded);
terms with materialised deltas (LoHa, LoKr: as large as the base weight) stay resident.

Which mask a layer uses depends on the tokens it sees, fixed per layer name:
`image` (double-block `img_*`, `img_in`, `final_layer.linear`), `text` (`txt_*`, `txt_in`),
`joint` (single-block `linear1`/`linear2`: text then image tokens) and `pooled` (modulation and
embedders: no token axis, one factor per image). Per model evaluation a `CallMasks` is set in a context
variable by a diffusion-model wrapper and reset when the evaluation ends; with none set, every
LoRA acts unmasked (an ordinary LoRA run).

On FUSED_DEVICES (CUDA, where Triton is installed and a GPU is there) a layer whose MLP or q/k
columns feed only a GELU or Flux's q/k norm leaves those columns' terms out and holds them in the
evaluation's `CallMasks`; the GELU or norm, replaced in the same lifecycle, adds them in its own
pass (`_Hold`). A held term that its consumer does not take, or a consumer that gets another tensor,
is an error. Whether those columns keep their own up matrix, or join the layer's other columns in
one packed up projection (`MaskedLowRank`'s `held`), is fixed when the LoRAs are loaded: kept apart
while FUSED_DEVICES names any device.
"""
from __future__ import annotations

import functools
import weakref
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

from ..freefuse_core import HAS_TRITON, MaskedLowRank, Prefetcher, up_gelu, up_rms_norm
from .host import CallbacksMP, PatcherInjection, comfy_ops, comfy_utils, flux_layers
from .loras import FreeFuseLora

INJECTION_KEY = "freefuse"
ATTACHMENT_KEY = "freefuse_loras"
STAGED_DEVICES = frozenset({"cuda"})   # device types whose LoRA terms are prefetched, not resident
# Device types where the LoRA terms of MLP-in and q/k columns join the GELU or norm after the layer
# (`_Hold`): CUDA where Triton is installed and a GPU is there (without one, every layer's up projections
# pack into one matmul); `bench/flux_bench.py` turns it off at run time for its rows c-unfused and d-unfused.
FUSED_DEVICES: frozenset[str] = frozenset({"cuda"} if HAS_TRITON and torch.cuda.is_available() else ())
POOLED = ("_mod.", "modulation", "time_in.", "vector_in.", "guidance_in.", "adaLN_modulation")


def stream_of(module: str) -> str:
    """The token stream a Flux linear layer acts on, from its path."""
    if any(p in module for p in POOLED):
        return "pooled"
    if module.startswith("single_blocks."):
        return "joint"
    if ".img_" in module or module.startswith(("img_in", "final_layer.linear")):
        return "image"
    if ".txt_" in module or module.startswith("txt_in"):
        return "text"
    raise ValueError(f"FreeFuse LoRA Loader: the LoRA targets '{module}', a layer FreeFuse does not "
                     "know how to mask. Use a LoRA made for FLUX.1.")


@dataclass(frozen=True)
class CallMasks:
    """Masks for one model evaluation: `[batch, tokens, loras]` per stream (`pooled`: one token),
    None = unmasked."""

    image: torch.Tensor | None = None
    text: torch.Tensor | None = None
    joint: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    loras_on: bool = True
    memos: dict = field(default_factory=dict, compare=False, repr=False)   # per stream: MaskedLowRank's memo
    held: dict = field(default_factory=dict, compare=False, repr=False)    # per consumer module: its `_Held`


ACTIVE: ContextVar[CallMasks | None] = ContextVar("freefuse_call_masks", default=None)


class CallScope:
    """`with CallScope(masks):` makes `masks` the active ones for one evaluation, then resets."""

    def __init__(self, masks: CallMasks):
        self.masks = masks

    def __enter__(self):
        self.token = ACTIVE.set(self.masks)

    def __exit__(self, kind, *exc):
        ACTIVE.reset(self.token)
        if kind is None and self.masks.held:
            paths = sorted(f"{held.hold.path} ({held.hold.kind})" for held in self.masks.held.values())
            raise RuntimeError(f"FreeFuse: the LoRA terms of {paths} were held for the op after them, which never ran. "
                               "This ComfyUI's Flux blocks differ from the ones FreeFuse knows; please report it.")


def _layers(loras: tuple[FreeFuseLora, ...], diffusion_model) -> dict[str, tuple[str, MaskedLowRank]]:
    """Per layer path: its stream and one MaskedLowRank holding every LoRA's terms there (the columns an
    op after the layer may take kept apart while FUSED_DEVICES names any device)."""
    terms: dict[str, list] = {}
    for column, lora in enumerate(loras):
        for part in lora.parts:
            terms.setdefault(part.module, []).append(part.term(column))
    layers = {}
    for path, ts in terms.items():
        stream = stream_of(path)
        holds = _holds_after(diffusion_model, path) if FUSED_DEVICES and stream != "pooled" else ()
        out_features = comfy_utils.get_attr(diffusion_model, path).weight.shape[0]
        layers[path] = stream, MaskedLowRank(ts, out_features, [c for hold in holds for c in hold.columns])
    return layers


class LoraInjection:
    """Replaces the forward of each targeted layer while the patcher has the model loaded.

    Resident LoRA tensors are cast to each (device, dtype) they run at once per LoRA set, not once
    per load, and prefetched ones are packed into host buffers once: clones of one loader output
    share this object, and extraction plus masked sampling load three clones in a row.
    """

    def __init__(self, loras: tuple[FreeFuseLora, ...], diffusion_model):
        self.layers = _layers(loras, diffusion_model)
        self.saved: dict[torch.nn.Module, object] = {}
        self.cast: dict[tuple[str, torch.device, torch.dtype], MaskedLowRank] = {}
        self.prefetcher = Prefetcher({path: lowrank for path, (_, lowrank) in self.layers.items()
                                      if not lowrank.dense})
        self.targets: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def inject(self, patcher) -> None:
        """Each target's forward set in the instance's own `__dict__` (ComfyUI ejects and injects again
        around its hook patching, three times a sampler call: `nn.Module.__setattr__`'s checks cost
        milliseconds over a Flux's ~470 targets, and a plain function attribute needs none of them)."""
        holder = _RINGS.get("holder")
        if holder is not None and holder() not in (None, self):
            holder().prefetcher.clear()
        _RINGS["holder"] = weakref.ref(self)
        for module, over, forward in self._targets(patcher.model.diffusion_model):
            own = module.__dict__
            previous = self.saved[module] = own.get("forward")
            own["forward"] = forward if previous is None else over(previous)

    def eject(self, patcher) -> None:
        """The forwards restored; the prefetch rings stay (`detached` says until when)."""
        for module, previous in self.saved.items():
            if previous is None:
                del module.__dict__["forward"]
            else:
                module.__dict__["forward"] = previous
        self.saved.clear()

    def detached(self, patcher, unpatch_all: bool) -> None:
        """ComfyUI's ON_DETACH callback. A full unload (`unpatch_all`) frees the prefetch rings. ComfyUI
        also detaches a model, without unpatching it, at every sampler call that loads it or another
        clone of it, and ejects it around its hook patching: the rings stay through those, or each call
        would rebuild every layer's views over them (~950 a call). So that a model some other clone
        replaced cannot keep them long, only the last injected LoRA set holds rings (`inject`)."""
        if unpatch_all:
            self.prefetcher.clear()

    def as_patcher_injection(self) -> PatcherInjection:
        return PatcherInjection(inject=self.inject, eject=self.eject)

    def _targets(self, root) -> list:
        """Per replaced module of `root`: the module, `over` (its new forward over a given base forward) and
        that forward over the class's own, built once per model: ComfyUI ejects and re-injects several
        times a run. The GELU after an MLP-in layer and the q/k norm after a qkv layer are replaced too:
        they add that layer's held terms (`_Hold`)."""
        if root not in self.targets:
            built = []
            for path, (stream, lowrank) in self.layers.items():
                module = comfy_utils.get_attr(root, path)
                holds = () if stream == "pooled" else _holds_after(root, path)
                over = functools.partial(_masked_forward, stream=stream, cast=self._caster(path, lowrank), holds=holds)
                built.append((module, over, over(_own_forward(module))))
                for hold in holds:
                    over = functools.partial(CONSUMER_FORWARDS[hold.kind], hold=hold)
                    built.append((hold.consumer, over, over(_own_forward(hold.consumer))))
            self.targets[root] = built
        return self.targets[root]

    def _caster(self, path: str, lowrank: MaskedLowRank):
        staged = path in self.prefetcher.layers

        def cast(device: torch.device, dtype: torch.dtype) -> MaskedLowRank:
            if staged and device.type in STAGED_DEVICES:
                return self.prefetcher.fetch(path, device, dtype)
            key = (path, device, dtype)
            if key not in self.cast:
                self.cast[key] = lowrank.to(device, dtype)
            return self.cast[key]
        return cast


_RINGS: dict[str, weakref.ref] = {}   # "holder": the last injected LoraInjection, the one whose rings may stay


def _own_forward(module):
    return type(module).forward.__get__(module)


@dataclass(frozen=True)
class _Hold:
    """Output columns of layer `path` that only `consumer` reads: a tanh GELU (`kind` "gelu", the MLP
    columns) or Flux's q/k norm ("qk_norm", the q and the k columns). On FUSED_DEVICES the layer leaves
    their LoRA terms out and the consumer adds them in its own pass over `y` (`up_gelu`, `up_rms_norm`)."""

    path: str
    kind: str
    consumer: torch.nn.Module
    columns: tuple[tuple[int, int], ...]
    heads: int = 0


@dataclass(frozen=True)
class _Held:
    """One call's held terms: the layer's whole output `y` and, per column range of `hold`, `(h, up)` or
    None (no LoRA slice covers exactly those columns: their terms are already in `y`)."""

    hold: _Hold
    y: torch.Tensor
    terms: tuple

    def checked(self, part: torch.Tensor, index: int) -> torch.Tensor:
        """`part`, after checking it is the view of `y`'s columns `index` that the consumer should get."""
        start, stop = self.hold.columns[index]
        y = self.y
        shape, strides = (*y.shape[:-1], stop - start), y.stride()
        if self.hold.kind == "qk_norm":   # `[B, L, H * D]` columns as `[B, H, L, D]`
            heads = self.hold.heads
            dim = (stop - start) // heads
            shape, strides = (shape[0], heads, shape[1], dim), (strides[0], dim, strides[1], 1)
        if part.data_ptr() != y.data_ptr() + start * y.element_size() or tuple(part.shape) != shape \
                or part.stride() != strides:
            raise RuntimeError(f"FreeFuse: the {self.hold.kind} after '{self.hold.path}' got a tensor other than that "
                               f"layer's columns {start}..{stop}. This ComfyUI's Flux blocks differ from the ones "
                               "FreeFuse knows; please report it.")
        return part


def _holds_after(root, path: str) -> tuple[_Hold, ...]:
    """What reads layer `path`'s output in Flux's blocks: the tanh GELU after `*_mlp.0` and after the MLP
    columns of `linear1`, the q/k norm after the q and k columns of `*_attn.qkv` and `linear1`."""
    parent_path, _, name = path.rpartition(".")
    parent = comfy_utils.get_attr(root, parent_path) if parent_path else root
    holds = []
    if name == "0" and isinstance(parent, torch.nn.Sequential) and len(parent) == 3 and _tanh_gelu(parent[1]):
        holds.append(_Hold(path, "gelu", parent[1], ((0, parent[0].out_features),)))
    if name == "linear1" and hasattr(parent, "mlp_hidden_dim_first") and not getattr(parent, "yak_mlp", True) \
            and _tanh_gelu(parent.mlp_act):
        start = 3 * parent.hidden_size
        holds.append(_Hold(path, "gelu", parent.mlp_act, ((start, start + parent.mlp_hidden_dim_first),)))
    if name in ("qkv", "linear1") and type(getattr(parent, "norm", None)) is flux_layers.QKNorm:
        hidden = parent.qkv.out_features // 3 if name == "qkv" else parent.hidden_size
        dim = hidden // parent.num_heads
        if all(isinstance(n, torch.nn.RMSNorm) and tuple(n.normalized_shape) == (dim,)
               for n in (parent.norm.query_norm, parent.norm.key_norm)):
            holds.append(_Hold(path, "qk_norm", parent.norm, ((0, hidden), (hidden, 2 * hidden)), parent.num_heads))
    return tuple(holds)


def _tanh_gelu(module) -> bool:
    return type(module) is torch.nn.GELU and module.approximate == "tanh"


def _masked_forward(base_forward, stream: str, cast, holds: tuple[_Hold, ...]):
    held_columns = tuple(c for hold in holds for c in hold.columns)

    def forward(x, *args, **kwargs):
        y = base_forward(x, *args, **kwargs)
        call = ACTIVE.get()
        if call is not None and not call.loras_on:
            return y
        mask = None if call is None else getattr(call, stream)
        memo = None if mask is None else _memo(call, stream)
        device = y.device
        fast = cast(device, y.dtype)
        x = x if x.dtype == y.dtype else x.to(y.dtype)
        if stream == "pooled" and mask is not None:
            return fast.add_to(y.unsqueeze(1), x.unsqueeze(1), mask, memo).squeeze(1)
        if not holds or call is None or device.type not in FUSED_DEVICES:
            return fast.add_to(y, x, mask, memo)
        y, terms = fast.add_to_holding(y, x, mask, memo, held_columns)
        for hold in holds:
            mine, terms = terms[:len(hold.columns)], terms[len(hold.columns):]
            if any(term is not None for term in mine):
                if hold.consumer in call.held:
                    raise RuntimeError(f"FreeFuse: '{hold.path}' ran twice before its {hold.kind}. This ComfyUI's "
                                       "Flux blocks differ from the ones FreeFuse knows; please report it.")
                call.held[hold.consumer] = _Held(hold, y, mine)
        return y

    return forward


def _memo(call: CallMasks, stream: str) -> dict:
    memo = call.memos.get(stream)
    if memo is None:
        memo = call.memos[stream] = {}
    return memo


def _gelu_forward(own_forward, hold: _Hold):
    def forward(inp):
        call = ACTIVE.get()
        held = None if call is None else call.held.pop(hold.consumer, None)
        return own_forward(inp) if held is None else up_gelu(held.checked(inp, 0), *held.terms[0])

    return forward


def _qk_norm_forward(own_forward, hold: _Hold):
    """Flux's `QKNorm.forward(q, k, v)`: each of q, k normed by its RMSNorm, cast to v's dtype."""
    def forward(q, k, v):
        call = ACTIVE.get()
        held = None if call is None else call.held.pop(hold.consumer, None)
        if held is None:
            return own_forward(q, k, v)
        norms = (hold.consumer.query_norm, hold.consumer.key_norm)
        out = [_normed(held, i, part, norm) for i, (part, norm) in enumerate(zip((q, k), norms))]
        return out[0].to(v), out[1].to(v)

    return forward


def _normed(held: _Held, index: int, part: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """`norm(part)` plus the held term, its weight read as ComfyUI's RMSNorm reads it: cast (or offloaded)
    where the module casts its weights or patches them, else the module's own."""
    if held.terms[index] is None:
        return norm(part)
    if norm.weight is None or not (getattr(norm, "comfy_cast_weights", False) or getattr(norm, "weight_function", ())
                                   or getattr(norm, "bias_function", ())):
        return up_rms_norm(held.checked(part, index), *held.terms[index], norm.weight, norm.eps)
    with comfy_ops.CastBiasWeightContext(norm, part, offloadable=True) as (weight, _):
        return up_rms_norm(held.checked(part, index), *held.terms[index], weight, norm.eps)


CONSUMER_FORWARDS = {"gelu": _gelu_forward, "qk_norm": _qk_norm_forward}


def attach_lora(model, lora: FreeFuseLora):
    """A clone of `model` with `lora` added to its FreeFuse LoRAs (unmerged, maskable)."""
    clone = model.clone()
    loras = tuple(model.get_attachment(ATTACHMENT_KEY) or ()) + (lora,)
    clone.set_attachments(ATTACHMENT_KEY, loras)
    injection = LoraInjection(loras, model.model.diffusion_model)
    clone.set_injections(INJECTION_KEY, [injection.as_patcher_injection()])
    clone.remove_callbacks_with_key(CallbacksMP.ON_DETACH, INJECTION_KEY)
    clone.add_callback_with_key(CallbacksMP.ON_DETACH, INJECTION_KEY, injection.detached)
    return clone


def loras_of(model) -> tuple[FreeFuseLora, ...]:
    return tuple(model.get_attachment(ATTACHMENT_KEY) or ())
