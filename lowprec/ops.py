"""One table {op: {backend: fn}} and the explicit choice of a backend.

Backends: ``reference`` (pure PyTorch, any device), ``cpp`` (lowprec._C CPU kernels),
``triton`` and ``cuda``.  ``auto`` picks, for the tensor's device, the first backend in
``AUTO_ORDER`` that is available *and* implements the op.  Naming a backend that is not
available, or that lacks the op, raises ``BackendUnavailable`` quoting why; nothing falls
back silently.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from functools import lru_cache
from typing import Callable, Dict

import torch

BACKENDS = ("reference", "cpp", "triton", "cuda")
AUTO_ORDER = {"cpu": ("cpp", "reference"), "cuda": ("cuda", "triton", "reference")}

_TABLE: Dict[str, Dict[str, Callable]] = {}
_LOADERS = {"reference": "lowprec._backends.reference", "cpp": "lowprec._backends.cpp",
            "triton": "lowprec._backends.triton", "cuda": "lowprec._backends.cuda"}


class BackendUnavailable(RuntimeError):
    """A backend was asked for that cannot run here; the message says why."""


def register(op: str, backend: str):
    """Decorator: ``fn`` implements ``op`` on ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")

    def deco(fn):
        _TABLE.setdefault(op, {})[backend] = fn
        _RESOLVED.clear()
        return fn
    return deco


def native_ms_eden(fn):
    """Decorator: ``fn`` (a backend's quantize or fake_quantize) computes rounding="ms_eden" in
    its own kernel, so ``resolve`` returns it as it is instead of wrapping it with the shared
    torch scale pass of reference/ms_eden.py."""
    fn.native_ms_eden = True
    return fn


@lru_cache(maxsize=None)
def backend_status(backend: str):
    """(available, reason) for a backend; importing it registers its ops."""
    if backend == "reference":
        importlib.import_module(_LOADERS[backend])
        return True, "pure PyTorch"
    if backend not in BACKENDS:
        return False, f"unknown backend {backend!r}; expected one of {BACKENDS} or 'auto'"
    if backend == "triton":
        if importlib.util.find_spec("triton") is None:
            return False, "triton is not installed (pip install triton)"
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            return False, ("Triton kernels need a CUDA GPU (TRITON_INTERPRET=1 runs them on the CPU "
                           "through the interpreter, for tests)")
    if backend == "cuda" and not torch.cuda.is_available():
        return False, "no CUDA device is visible to torch"
    try:
        importlib.import_module(_LOADERS[backend])
    except (ImportError, OSError, RuntimeError) as e:
        return False, f"{type(e).__name__}: {e}"
    return True, "loaded"


def available_backends():
    return [b for b in BACKENDS if backend_status(b)[0]]


_RESOLVED: Dict[tuple, Callable] = {}


def resolve(op: str, backend: str = "auto", device=None) -> Callable:
    """The implementation of ``op`` for ``backend`` ('auto': fastest available for ``device``).
    Successful answers are memoized per (op, backend, device type) until the next ``register``
    (optimizers resolve once per parameter and step)."""
    dev = device.type if isinstance(device, torch.device) else device
    key = (op, backend, dev)
    fn = _RESOLVED.get(key)
    if fn is None:
        fn = _RESOLVED[key] = _resolve(op, backend, device)
    return fn


def auto_backend(op: str, device=None) -> str:
    """The backend ``backend="auto"`` picks for ``op`` on ``device``: the first available one
    in the device's AUTO_ORDER that implements the op."""
    dev = torch.device(device).type if device is not None else "cpu"
    for b in AUTO_ORDER.get(dev, ("reference",)):
        if backend_status(b)[0] and b in _TABLE.get(op, {}):
            return b
    raise BackendUnavailable(f"no backend implements {op!r} on {dev}")


def _resolve(op: str, backend: str, device) -> Callable:
    return _with_ms_eden(op, _resolve_impl(op, backend, device), backend, device)


def _with_ms_eden(op: str, fn: Callable, backend: str, device) -> Callable:
    """``quantize`` / ``fake_quantize`` of any backend with rounding="ms_eden": the backend
    rounds the elements to nearest, the shared pass of reference/ms_eden.py corrects the scales.
    A backend whose op computes MS-EDEN in its own kernel (``native_ms_eden``: Triton, cpp) is
    returned as it is."""
    if op not in ("quantize", "fake_quantize") or getattr(fn, "native_ms_eden", False):
        return fn
    from .reference import ms_eden
    quantize_rtn = fn if op == "quantize" else _resolve_impl("quantize", backend, device)

    def random_bytes(seed, offset, n, device=None):
        return resolve("random_bytes", "auto", device)(seed, offset, n, device=device)

    @functools.wraps(fn)
    def wrapped(x, fmt="mxfp4", rounding="nearest", seed=None, offset=0, *args, **kwargs):
        if rounding != "ms_eden":
            return fn(x, fmt, rounding, seed, offset, *args, **kwargs)
        if args:
            raise TypeError("rounding='ms_eden': pass the remaining arguments by keyword")
        from .reference.checks import check_quantize_call
        check_quantize_call(x, fmt, "stochastic", seed, offset, kwargs.get("nan_policy", "propagate"),
                            False, kwargs.get("amax_tensor"))
        if op == "quantize":
            return ms_eden.quantize(quantize_rtn, random_bytes, x, fmt, seed, offset, kwargs.get("strict", False),
                                    kwargs.get("nan_policy", "propagate"), kwargs.get("amax_tensor"))
        return ms_eden.fake_quantize_with_scales(quantize_rtn, random_bytes, x, fmt, seed, offset,
                                                 kwargs.get("nan_policy", "propagate"), kwargs.get("amax_tensor"),
                                                 kwargs.get("with_scales", True))
    return wrapped


def _resolve_impl(op: str, backend: str, device) -> Callable:
    if backend == "auto":
        return _TABLE[op][auto_backend(op, device)]
    ok, why = backend_status(backend)
    if not ok:
        raise BackendUnavailable(f"backend {backend!r} is not available: {why}")
    impls = _TABLE.get(op, {})
    if backend not in impls:
        raise BackendUnavailable(f"backend {backend!r} does not implement {op!r} "
                                 f"(implemented by: {sorted(impls) or 'none'})")
    return impls[backend]


def implementations(op: str) -> Dict[str, Callable]:
    for b in BACKENDS:
        backend_status(b)
    return dict(_TABLE.get(op, {}))
