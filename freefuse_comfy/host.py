"""The one place where the pack imports ComfyUI.

Every other module of `freefuse_comfy/` and `nodes/` takes ComfyUI's pieces from here, so a
ComfyUI API change touches one file and `freefuse_core/` stays free of the host.
"""
import comfy.ldm.flux.layers as flux_layers
import comfy.ldm.flux.model as flux_model
import comfy.lora as comfy_lora
import comfy.lora_convert as lora_convert
import comfy.model_management as comfy_model_management
import comfy.model_patcher as model_patcher
import comfy.ops as comfy_ops
import comfy.sample as comfy_sample
import comfy.samplers as comfy_samplers
import comfy.sd as comfy_sd
import comfy.sd1_clip as sd1_clip
import comfy.supported_models as supported_models
import comfy.supported_models_base as supported_models_base
import comfy.taesd.taesd as taesd
import comfy.utils as comfy_utils
import comfy.weight_adapter as weight_adapter
import folder_paths
import latent_preview
from comfy.patcher_extension import CallbacksMP, PatcherInjection, WrappersMP
from comfy_api.latest import ComfyExtension, io, ui

__all__ = [
    "CallbacksMP", "ComfyExtension", "PatcherInjection", "WrappersMP", "comfy_lora", "comfy_model_management",
    "comfy_ops",
    "comfy_sample", "comfy_samplers", "comfy_sd", "comfy_utils", "flux_layers", "flux_model", "folder_paths", "io",
    "latent_preview",
    "lora_convert", "model_patcher", "sd1_clip", "supported_models", "supported_models_base",
    "taesd", "ui", "weight_adapter",
]
