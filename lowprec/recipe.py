"""Per-GEMM quantization recipes for a linear layer.

A linear layer runs three GEMMs, each with two quantized operands, blocks running along
the GEMM's reduction axis K:
  fprop  Y  = Q(X)  Q(W)^T     K = in_features    X blocks along in, W along in
  dgrad  dX = Q(dY) Q(W)       K = out_features   dY along out, W along out
  wgrad  dW = Q(dY)^T Q(X)     K = tokens         dY along tokens, X along tokens
A Hadamard transform of size n (random signs when ``hadamard_random``) is applied to both
operands of a GEMM along K, which leaves the exact product unchanged.

Operand formats: a ``QuantFormat``, a preset name, ``"bf16"`` (round to bfloat16) or
``None`` (fp32, untouched).  Recipes are frozen and round-trip through JSON.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Union

from .formats import QuantFormat, clips_block_max, effective_format, get_format
from .reference.rounding import ROUNDING_MODES

ESTIMATORS = ("ste", "clipped_ste", "scale_grad")
BACKWARD_OPERANDS = ("master", "forward")
OperandFormat = Union[QuantFormat, str, None]


def sr_scale_note(fmt: QuantFormat, sr_clipping: bool) -> str:
    """How a stochastic operand's block scale is chosen, in a few words."""
    if not clips_block_max(fmt):
        return "scale cannot clip"
    if sr_clipping:
        return "clipping scale: biased at block maxima"
    return "rceil scale" if fmt.scale.kind == "e8m0" else "scale rounded up"


def _normalize_format(fmt: OperandFormat):
    if fmt is None or fmt == "bf16":
        return fmt
    if isinstance(fmt, dict):
        return QuantFormat.from_dict(fmt)
    return get_format(fmt)


@dataclass(frozen=True)
class OperandConfig:
    """How one GEMM operand is quantized.

    With ``rounding="stochastic"`` the block scale is by default the format's non-clipping
    counterpart (``formats.nonclipping``: e8m0 ``rceil``, minifloat scales rounded up), so the
    quantizer is unbiased at every block maximum; ``sr_clipping=True`` keeps the format's own
    scale rule, whose saturation biases stochastic rounding toward zero at block maxima
    (what NVIDIA's NVFP4 kernels do: E4M3 scales rounded to nearest)."""

    format: OperandFormat = None
    rounding: str = "nearest"
    sr_clipping: bool = False

    def __post_init__(self):
        object.__setattr__(self, "format", _normalize_format(self.format))
        if self.rounding not in ROUNDING_MODES:
            raise ValueError(f"unknown rounding {self.rounding!r}; expected one of {ROUNDING_MODES}")
        if not isinstance(self.sr_clipping, bool):
            raise TypeError(f"sr_clipping must be a bool, got {self.sr_clipping!r}")
        if self.rounding == "ms_eden" and isinstance(self.format, QuantFormat):
            from .reference.ms_eden import check_format
            check_format(self.format)

    @property
    def effective_format(self) -> OperandFormat:
        """The format the quantizer runs: the non-clipping counterpart for stochastic
        rounding unless ``sr_clipping``."""
        return effective_format(self.format, self.rounding, self.sr_clipping) if self.quantized else self.format

    @property
    def quantized(self) -> bool:
        return isinstance(self.format, QuantFormat)

    @property
    def stochastic(self) -> bool:
        return self.quantized and self.rounding in ("stochastic", "ms_eden")

    def to_dict(self) -> dict:
        f = self.format.to_dict() if isinstance(self.format, QuantFormat) else self.format
        return {"format": f, "rounding": self.rounding, "sr_clipping": self.sr_clipping}

    def describe(self) -> str:
        if self.format is None:
            return "fp32"
        if self.format == "bf16":
            return "bf16"
        if self.rounding == "ms_eden":
            return f"{self.format}/MS-EDEN"
        if self.rounding != "stochastic":
            return f"{self.format}"
        return f"{self.format}/SR[{sr_scale_note(self.format, self.sr_clipping)}]"


@dataclass(frozen=True)
class GemmConfig:
    """Two operands (lhs, rhs) and an optional Hadamard transform along K."""

    lhs: OperandConfig = field(default_factory=OperandConfig)
    rhs: OperandConfig = field(default_factory=OperandConfig)
    hadamard: int = 0
    hadamard_random: bool = True

    def __post_init__(self):
        for name in ("lhs", "rhs"):
            v = getattr(self, name)
            if isinstance(v, dict):
                object.__setattr__(self, name, OperandConfig(**v))
        if self.hadamard and (self.hadamard & (self.hadamard - 1) or self.hadamard < 2 or self.hadamard > 1 << 15):
            raise ValueError(f"hadamard size must be 0 or a power of two in [2, 32768], got {self.hadamard}")

    def to_dict(self) -> dict:
        return {"lhs": self.lhs.to_dict(), "rhs": self.rhs.to_dict(), "hadamard": self.hadamard,
                "hadamard_random": self.hadamard_random}

    def describe(self) -> str:
        h = f" H{self.hadamard}{'r' if self.hadamard_random else ''}" if self.hadamard else ""
        return f"{self.lhs.describe()} x {self.rhs.describe()}{h}"


GEMM_BACKENDS = ("auto", "simulate", "kernels")


@dataclass(frozen=True)
class Recipe:
    """fprop (X, W), dgrad (dY, W), wgrad (dY, X) configs, a gradient estimator for the
    forward quantizers, the backend that runs the quantizers, and the one that runs the
    Hadamard transforms (kept apart: not every quantizer backend has a Hadamard kernel)."""

    name: str = "custom"
    fprop: GemmConfig = field(default_factory=GemmConfig)
    dgrad: GemmConfig = field(default_factory=GemmConfig)
    wgrad: GemmConfig = field(default_factory=GemmConfig)
    estimator: str = "ste"
    backend: str = "auto"
    hadamard_backend: str = "auto"
    # data parallel: all-reduce (max) the tensor amax of activations and gradients across the
    # process group (lowprec.distributed), so every rank uses the tensor scale one process would
    sync_tensor_amax: bool = False
    # which kernels compute the three GEMMs (lowprec.execution): "auto" = tensor-core kernels on
    # CUDA where the formats allow, the simulator's fp32 matmul elsewhere; "simulate" = the fp32
    # matmul of fake-quantized operands everywhere; "kernels" = the kernels or an error
    gemm_backend: str = "auto"
    # OutControl (TetraJet-v2): in every forward the k input channels (columns of X) with the
    # largest max |x| over the tokens are computed in bf16 (X, W and dY of those channels), the
    # others through the quantized GEMMs; 0: off
    outlier_channels: int = 0
    # what the backward GEMMs quantize: "master" = X and W themselves (each GEMM its own
    # quantization of the high-precision tensors); "forward" (Quartet) = the forward's quantized
    # X_q and W_q, in the fprop Hadamard domain, so the gradient is that of the forward the layer
    # computed (the estimator's factor applies there, then the transform is undone)
    backward_operands: str = "master"

    def __post_init__(self):
        for name in ("fprop", "dgrad", "wgrad"):
            v = getattr(self, name)
            if isinstance(v, dict):
                object.__setattr__(self, name, GemmConfig(**v))
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; expected one of {ESTIMATORS}")
        if self.gemm_backend not in GEMM_BACKENDS:
            raise ValueError(f"unknown gemm_backend {self.gemm_backend!r}; expected one of {GEMM_BACKENDS}")
        if isinstance(self.outlier_channels, bool) or not isinstance(self.outlier_channels, int) \
                or self.outlier_channels < 0:
            raise ValueError(f"outlier_channels is a count >= 0, got {self.outlier_channels!r}")
        if self.backward_operands not in BACKWARD_OPERANDS:
            raise ValueError(f"backward_operands must be one of {BACKWARD_OPERANDS}, got {self.backward_operands!r}")
        if self.estimator == "scale_grad":
            for side in ("lhs", "rhs"):
                op = getattr(self.fprop, side)
                if op.quantized and op.format.scale_statistic != "amax":
                    raise ValueError("the scale_grad estimator differentiates an amax-based block scale; "
                                     f"fprop.{side} uses scale_statistic={op.format.scale_statistic!r}")

    # -- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"name": self.name, "fprop": self.fprop.to_dict(), "dgrad": self.dgrad.to_dict(),
                "wgrad": self.wgrad.to_dict(), "estimator": self.estimator, "backend": self.backend,
                "hadamard_backend": self.hadamard_backend, "sync_tensor_amax": self.sync_tensor_amax,
                "gemm_backend": self.gemm_backend,
                **({"outlier_channels": self.outlier_channels} if self.outlier_channels else {}),
                **({"backward_operands": self.backward_operands} if self.backward_operands != "master" else {})}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "Recipe":
        return cls.from_dict(json.loads(s))

    # -- editing -------------------------------------------------------------------------
    def replace(self, **changes) -> "Recipe":
        """Override any knob: top-level fields, or 'gemm.operand.field' / 'gemm.field' paths,
        e.g. ``recipe.replace(**{"wgrad.hadamard": 32, "fprop.lhs.rounding": "stochastic"})``."""
        r = self
        for key, value in changes.items():
            parts = key.split(".")
            if len(parts) == 1:
                r = dataclasses.replace(r, **{key: value})
            elif len(parts) == 2:
                g = dataclasses.replace(getattr(r, parts[0]), **{parts[1]: value})
                r = dataclasses.replace(r, **{parts[0]: g})
            elif len(parts) == 3:
                gemm = getattr(r, parts[0])
                op = dataclasses.replace(getattr(gemm, parts[1]), **{parts[2]: value})
                r = dataclasses.replace(r, **{parts[0]: dataclasses.replace(gemm, **{parts[1]: op})})
            else:
                raise ValueError(f"cannot override {key!r}")
        return r

    # -- properties ----------------------------------------------------------------------
    @property
    def quantized(self) -> bool:
        return any(op.format is not None for g in (self.fprop, self.dgrad, self.wgrad) for op in (g.lhs, g.rhs))

    def block_multiples(self):
        """(multiple of in_features, multiple of out_features) a layer needs: every block and
        Hadamard chunk along a feature axis must fit exactly (tokens are padded instead)."""
        def bs(op: OperandConfig) -> int:
            return op.format.block_size if op.quantized else 1
        def tile(op: OperandConfig) -> int:
            return op.format.block_size if op.quantized and op.format.block_2d else 1
        f, d, w = self.fprop, self.dgrad, self.wgrad
        m_in = max(bs(f.lhs), bs(f.rhs), f.hadamard, tile(d.rhs), tile(w.rhs))
        m_out = max(bs(d.lhs), bs(d.rhs), d.hadamard, tile(f.rhs), tile(w.lhs))
        return m_in, m_out

    def shape_mismatch(self, in_features: int, out_features: int):
        """Why a linear layer of this shape cannot run under the recipe (None when it can)."""
        m_in, m_out = self.block_multiples()
        if in_features % m_in or out_features % m_out:
            return (f"shape in={in_features}, out={out_features} does not divide into the recipe's blocks "
                    f"(in_features must be a multiple of {m_in}, out_features of {m_out})")
        return None

    def describe(self) -> str:
        return (f"{self.name}: fprop[{self.fprop.describe()}] dgrad[{self.dgrad.describe()}] "
                f"wgrad[{self.wgrad.describe()}] est={self.estimator}"
                + (" amax=all-reduced" if self.sync_tensor_amax else "")
                + (f" outliers={self.outlier_channels}xbf16" if self.outlier_channels else "")
                + (" bwd=forward-quantized" if self.backward_operands == "forward" else ""))

    # -- convert_model protocol ------------------------------------------------------------
    def convert_module(self, module, name: str):
        """The quantized replacement of ``module``, or a reason string when it is skipped."""
        from .nn import QuantLinear
        return QuantLinear.from_module(module, self, name=name)

    def can_convert(self, module) -> bool:
        from .nn import QuantLinear
        return QuantLinear.accepts(module)


def _op(fmt, rounding="nearest", **fmt_changes) -> OperandConfig:
    f = get_format(fmt) if fmt not in (None, "bf16") else fmt
    if fmt_changes:
        f = f.replace(**fmt_changes)
    return OperandConfig(f, rounding)


def _uniform(name: str, fmt) -> Recipe:
    return Recipe(name, GemmConfig(_op(fmt), _op(fmt)), GemmConfig(_op(fmt), _op(fmt)), GemmConfig(_op(fmt), _op(fmt)))


def _nvfp4() -> Recipe:
    """NVIDIA's NVFP4 training recipe: 16x16 2D weight tiles, 1x16 UE4M3 blocks with an fp32
    tensor scale elsewhere, random Hadamard-16 on both wgrad operands, stochastic rounding on
    gradients, round-to-nearest on weights and activations. The gradients' UE4M3 block scales
    are rounded up, so stochastic rounding is unbiased at block maxima (NVIDIA rounds them to
    nearest: ``**{"dgrad.lhs.sr_clipping": True, "wgrad.lhs.sr_clipping": True}``)."""
    w2d = _op("nvfp4", block_2d=True)
    act = _op("nvfp4")
    grad = _op("nvfp4", "stochastic")
    return Recipe("nvfp4", GemmConfig(act, w2d), GemmConfig(grad, w2d),
                  GemmConfig(grad, act, hadamard=16, hadamard_random=True))


def _nvfp4_4over6() -> Recipe:
    """NVIDIA's NVFP4 recipe with Four Over Six on every operand: each 1x16 block (16x16
    weight tile) takes the UE4M3 scale that maps its amax to 6 or the one that maps it to 4,
    whichever has the lower round-to-nearest squared error (``QuantFormat.four_over_six``).
    The tensor scales map the amaxes to 448 * 4, so that neither choice overflows."""
    w2d = _op("nvfp4", block_2d=True, four_over_six="mse")
    act = _op("nvfp4", four_over_six="mse")
    grad = _op("nvfp4", "stochastic", four_over_six="mse")
    return Recipe("nvfp4_4over6", GemmConfig(act, w2d), GemmConfig(grad, w2d),
                  GemmConfig(grad, act, hadamard=16, hadamard_random=True))


def _quartet2() -> Recipe:
    """Quartet II (NVFP4): the forward GEMM with Four Over Six block scales, round to
    nearest; both backward GEMMs with MS-EDEN (round-to-nearest elements, unbiased stochastic
    block scales, reference/ms_eden.py) on a random Hadamard-32 transform of both operands.
    Weights in 1x16 blocks (each GEMM quantizes its own copy)."""
    fwd = _op("nvfp4", four_over_six="mse")
    bwd = _op("nvfp4", "ms_eden")
    return Recipe("quartet2", GemmConfig(fwd, fwd), GemmConfig(bwd, bwd, hadamard=32, hadamard_random=True),
                  GemmConfig(bwd, bwd, hadamard=32, hadamard_random=True))


def _quartet(backward_rounding: str = "stochastic", name: str = "quartet") -> Recipe:
    """Quartet (Castro et al. 2025), MXFP4 forward and backward.
    Forward (QuEST): X and W through a fixed Hadamard-32 along in_features, then MXFP4 blocks
    of 32 whose E8M0 scale is 2^floor(log2(c / 6)) for the block's Gaussian MSE-optimal
    clipping value c = 2.9224751 * RMS (``QuantFormat.scale_statistic="gaussian"``, rule
    ``rfloor``), round to nearest; the trust-mask estimator (``clipped_ste``) passes the
    gradient only to the elements that did not clip.
    Backward: dgrad and wgrad read the forward's quantized X_q and W_q
    (``backward_operands="forward"``) through a random Hadamard-32 along each GEMM's reduction
    axis, in MXFP4 with the OCP floor scale on a 3/4 pre-scale (nothing clips), rounded
    stochastically (unbiased), as the paper's backward pass; ``backward_rounding="nearest"``
    gives the round-to-nearest variant (``quartet_rtn``)."""
    fwd = _op("mxfp4", scale_statistic="gaussian", scale_rule="rfloor")
    bwd = _op("mxfp4", backward_rounding, pre_scale=0.75)
    return Recipe(name, GemmConfig(fwd, fwd, hadamard=32, hadamard_random=False),
                  GemmConfig(bwd, bwd, hadamard=32, hadamard_random=True),
                  GemmConfig(bwd, bwd, hadamard=32, hadamard_random=True),
                  estimator="clipped_ste", backward_operands="forward")


def _ue5m3() -> Recipe:
    """The seed study's trade-off: UE5M3 block-16 scales with a tensor scale, random
    Hadamard-16 on every GEMM, stochastic rounding on gradients (block scales rounded up, so
    it is unbiased at block maxima)."""
    act = _op("ue5m3")
    grad = _op("ue5m3", "stochastic")
    return Recipe("ue5m3", GemmConfig(act, act, hadamard=16), GemmConfig(grad, act, hadamard=16),
                  GemmConfig(grad, act, hadamard=16))


def _inference(name: str, fmt: str, activations: bool) -> Recipe:
    """An inference recipe: the forward GEMM only, weights in 1-D blocks of 16 (32 for MXFP4)
    along in_features, round to nearest; activations quantized the same way for W4A4, kept in
    high precision for weight-only.  Gradients (if anyone trains through it) are fp32.

    Training recipes quantize weights in 16x16 tiles so that the same codes serve fprop and
    dgrad (Wᵀ); at inference there is no dgrad, and 1x16 blocks follow each output row's own
    range, which loses much less (docs/recipes.md has the measured numbers)."""
    w = _op(fmt)
    x = _op(fmt) if activations else _op(None)
    full = _op(None)
    return Recipe(name, GemmConfig(x, w), GemmConfig(full, full), GemmConfig(full, full))


PRESETS = {
    "bf16": _uniform("bf16", "bf16"),
    "mxfp8": _uniform("mxfp8", "mxfp8"),
    "mxfp4": _uniform("mxfp4", "mxfp4"),
    "nvfp4": _nvfp4(),
    "nvfp4_4over6": _nvfp4_4over6(),
    "quartet": _quartet(),
    "quartet_rtn": _quartet("nearest", "quartet_rtn"),
    "quartet2": _quartet2(),
    "ue5m3": _ue5m3(),
    # inference: W4A16 (weight-only) and W4A4
    "nvfp4_weight_only": _inference("nvfp4_weight_only", "nvfp4", activations=False),
    "nvfp4_w4a4": _inference("nvfp4_w4a4", "nvfp4", activations=True),
    "mxfp4_weight_only": _inference("mxfp4_weight_only", "mxfp4", activations=False),
    "mxfp4_w4a4": _inference("mxfp4_w4a4", "mxfp4", activations=True),
}
TRAINING_PRESETS = ("bf16", "mxfp8", "mxfp4", "nvfp4", "nvfp4_4over6", "quartet", "quartet_rtn", "quartet2", "ue5m3")
INFERENCE_PRESETS = ("nvfp4_weight_only", "nvfp4_w4a4", "mxfp4_weight_only", "mxfp4_w4a4")


def get(name: Union[str, Recipe], **overrides) -> Recipe:
    """A named recipe, with optional overrides: for training "bf16", "mxfp8", "mxfp4", "nvfp4",
    "nvfp4_4over6", "quartet", "quartet_rtn", "quartet2", "ue5m3"; for inference "nvfp4_weight_only", "nvfp4_w4a4", "mxfp4_weight_only", "mxfp4_w4a4"."""
    if isinstance(name, Recipe):
        r = name
    else:
        try:
            r = PRESETS[name.lower()]
        except KeyError:
            raise ValueError(f"unknown recipe {name!r}; presets: {sorted(PRESETS)}") from None
    return r.replace(**overrides) if overrides else r


def names():
    return list(PRESETS)
