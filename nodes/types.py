"""The pack's own socket type."""
from ..freefuse_comfy.host import io

FreeFuseMasksType = io.Custom("FREEFUSE_MASKS")
