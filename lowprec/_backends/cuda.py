"""Registers the CUDA kernels of lowprec._C (importing fails with the reason if they are not built)."""

try:
    from .. import _C
except ImportError as e:
    raise ImportError(f"lowprec._C is not built ({e})") from e
if not _C.has_cuda:
    raise ImportError("lowprec._C was built without CUDA kernels (LOWPREC_BUILD_CUDA=1 and a CUDA torch build them)")

from . import fakes  # noqa: E402,F401
from .extension_ops import register_block_ops  # noqa: E402

register_block_ops("cuda", "cuda")
