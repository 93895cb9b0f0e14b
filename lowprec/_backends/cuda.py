"""Registers the CUDA kernels of lowprec._C (importing fails with the reason if they are not built)."""

import torch

from .. import ops
from .cpp import _as_int64

try:
    from .. import _C
except ImportError as e:
    raise ImportError(f"lowprec._C is not built ({e})") from e
if not _C.has_cuda:
    raise ImportError("lowprec._C was built without CUDA kernels (LOWPREC_BUILD_CUDA=1 and a CUDA torch build them)")


@ops.register("random_bytes", "cuda")
def random_bytes(seed: int, offset: int, numel: int, device=None) -> torch.Tensor:
    device = torch.device(device) if device is not None else torch.device("cuda")
    if device.type != "cuda":
        raise ops.BackendUnavailable(f"backend 'cuda' runs on CUDA devices, not {device}")
    return torch.ops.lowprec.random_bytes(_as_int64(seed), _as_int64(offset), int(numel), device)
