"""FreeFuse, the method: host-independent (torch, numpy, scikit-image; Triton on CUDA, on first use; never ComfyUI)."""
from .attention import cross_rows, salient_tokens, subject_maps, suppress_sinks
from .fused import HAS_TRITON, up_gelu, up_rms_norm
from .lowrank import DenseTerm, LowRankTerm, MaskedLowRank
from .prefetch import Prefetcher
from .superpixels import (
                          MaskResult,
                          maps_at,
                          masks_from_attention,
                          owner_to_pixel_masks,
                          owner_to_token_masks,
                          quick_gil_handoff,
                          resize_owner,
                          slic_segments,
                          vote_owner,
)
from .tokens import TokenPiece, find_subject_tokens

__all__ = [
    "HAS_TRITON", "DenseTerm", "LowRankTerm", "MaskResult", "MaskedLowRank", "Prefetcher", "TokenPiece", "cross_rows",
    "find_subject_tokens", "maps_at", "masks_from_attention", "owner_to_pixel_masks", "owner_to_token_masks",
    "quick_gil_handoff", "resize_owner", "salient_tokens", "slic_segments", "subject_maps", "suppress_sinks",
    "up_gelu", "up_rms_norm", "vote_owner",
]
