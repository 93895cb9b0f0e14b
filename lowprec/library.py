"""torch.library custom ops, so that quantized modules trace under torch.compile.

``lowprec::fake_quantize(x, fmt_json, rounding, rng, extra_offset, estimator, backend, sr_clipping)``
returns (x_hat fp32, df/dx fp32 or an empty tensor).  ``rng`` is an int64 tensor
[seed, offset] so that a module's advancing offset never forces a recompile; the op
draws its Philox bits at offset + extra_offset.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Tuple

import torch

from . import ops
from .estimators import grad_factor
from .distributed import data_parallel_amax
from .formats import QuantFormat


@lru_cache(maxsize=256)
def format_from_json(fmt_json: str) -> QuantFormat:
    return QuantFormat.from_dict(json.loads(fmt_json))


@lru_cache(maxsize=256)
def format_to_json(fmt: QuantFormat) -> str:
    return json.dumps(fmt.to_dict(), sort_keys=True)


def fake_quantize_eager(x: torch.Tensor, fmt_json: str, rounding: str, rng: torch.Tensor,
                        extra_offset: int, estimator: str, backend: str,
                        sr_clipping: bool = False, amax_sync: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """The body of ``lowprec::fake_quantize``. Eager callers (QuantLinearFunction outside a
    torch.compile trace) call it directly: the custom-op wrapper adds ~0.1 ms of Python per
    call and nothing else, since the autograd of the quantized GEMMs is QuantLinearFunction's."""
    fmt = format_from_json(fmt_json)
    seed, offset = rng.tolist()
    fn = ops.resolve("fake_quantize", backend, x.device)
    amax_tensor = data_parallel_amax(x) if amax_sync else None
    x_hat, s_eff, amax = fn(x, fmt, rounding=rounding, seed=seed, offset=offset + extra_offset,
                            with_scales=estimator != "ste", sr_clipping=sr_clipping, amax_tensor=amax_tensor)
    factor = grad_factor(estimator, x, x_hat, s_eff, amax, fmt.element.max)
    return x_hat, factor


@torch.library.custom_op("lowprec::fake_quantize", mutates_args=())
def fake_quantize_op(x: torch.Tensor, fmt_json: str, rounding: str, rng: torch.Tensor,
                     extra_offset: int, estimator: str, backend: str,
                     sr_clipping: bool = False, amax_sync: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    return fake_quantize_eager(x, fmt_json, rounding, rng, extra_offset, estimator, backend, sr_clipping, amax_sync)


@fake_quantize_op.register_fake
def _(x, fmt_json, rounding, rng, extra_offset, estimator, backend, sr_clipping=False, amax_sync=False):
    factor = x.new_empty(x.shape if estimator != "ste" else (0,), dtype=torch.float32)
    return x.new_empty(x.shape, dtype=torch.float32), factor
