"""Registers the C++ CPU kernels of lowprec._C (importing fails with the reason if it is not built)."""

import torch

from .. import ops

try:
    from .. import _C  # noqa: F401  (loads the TORCH_LIBRARY registrations)
except ImportError as e:
    raise ImportError(f"lowprec._C is not built ({e}); build it with "
                      "`pip install -e . --no-build-isolation`") from e


@ops.register("random_bytes", "cpp")
def random_bytes(seed: int, offset: int, numel: int, device=None) -> torch.Tensor:
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cpu":
        raise ops.BackendUnavailable(f"backend 'cpp' runs on the CPU, not {device}")
    return torch.ops.lowprec.random_bytes(_as_int64(seed), _as_int64(offset), int(numel), device)


def _as_int64(v: int) -> int:
    """Seeds and offsets are int64 on the op boundary; uint64 bit patterns wrap."""
    v = int(v) & 0xFFFFFFFFFFFFFFFF
    return v - (1 << 64) if v >= 1 << 63 else v
