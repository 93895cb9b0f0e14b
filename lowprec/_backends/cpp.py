"""Registers the C++ CPU kernels of lowprec._C (importing fails with the reason if it is not built)."""

try:
    from .. import _C  # noqa: F401  (loads the TORCH_LIBRARY registrations)
except ImportError as e:
    raise ImportError(f"lowprec._C is not built ({e}); build it with "
                      "`pip install -e . --no-build-isolation`") from e

from . import fakes  # noqa: E402,F401  (fake implementations for torch.compile / opcheck)
from .extension_ops import register_block_ops  # noqa: E402

register_block_ops("cpp", "cpu")
