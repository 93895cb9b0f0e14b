"""Number formats: element formats, scale formats and the block-scaled ``QuantFormat``.

Every format is a frozen dataclass validated on construction.  The value of every code
is defined here once, as a 2**bits-entry fp32 table built from the format's fields, and
every backend decodes through the same definition (see ``docs/numerics.md``).

A minifloat with ``e`` exponent bits, ``m`` mantissa bits and bias ``b`` has value
  exponent field E = 0:  (M / 2**m) * 2**(1 - b)            (subnormal)
  exponent field E > 0:  (1 + M / 2**m) * 2**(E - b)        (normal)
with NaN/Inf codes as the format's convention says.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Optional, Union

import torch

__all__ = [
    "ElementFormat", "ScaleFormat", "QuantFormat",
    "E2M1", "E2M3", "E3M2", "E4M3", "E5M2",
    "E8M0", "UE4M3", "UE5M3", "FP32_SCALE",
    "MXFP4", "NVFP4", "UE5M3_FP4", "MXFP8", "MXFP6_E2M3", "MXFP6_E3M2",
    "element_format", "scale_format", "get_format", "PRESETS", "nonclipping", "clips_block_max", "effective_format",
    "gaussian_clip_ratio",
]

ScaleRule = Literal["floor", "ceil", "even", "rceil", "rfloor", "amax"]
E8M0_RULES = ("floor", "ceil", "even", "rceil", "rfloor")
SCALE_STATISTICS = ("amax", "gaussian")


def _minifloat_value(code: int, ebits: int, mbits: int, bias: int) -> float:
    """Magnitude of an unsigned minifloat code (no NaN/Inf handling)."""
    exp_field = code >> mbits
    man_field = code & ((1 << mbits) - 1)
    if exp_field == 0:
        return math.ldexp(man_field / (1 << mbits), 1 - bias)
    return math.ldexp(1.0 + man_field / (1 << mbits), exp_field - bias)


@dataclass(frozen=True)
class ElementFormat:
    """A signed minifloat element format (sign bit on top, then exponent, then mantissa).

    ``nan_code``: the positive code that means NaN (the negative one is ``nan_code |
    sign_bit``), or None.  ``inf_code``: the positive code for +Inf, or None.  ``max``
    is the largest finite magnitude; conversions always saturate to ±max.
    """

    name: str
    ebits: int
    mbits: int
    bias: int
    max: float
    nan_code: Optional[int] = None
    inf_code: Optional[int] = None

    def __post_init__(self):
        if self.ebits < 1 or self.mbits < 0 or self.bits > 8:
            raise ValueError(f"{self.name}: unsupported layout e{self.ebits}m{self.mbits}")
        grid_max = max(v for v in self.positive_grid())
        if grid_max != self.max:
            raise ValueError(f"{self.name}: max {self.max} does not match the code table ({grid_max})")

    @property
    def bits(self) -> int:
        return 1 + self.ebits + self.mbits

    @property
    def sign_bit(self) -> int:
        return 1 << (self.ebits + self.mbits)

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number, 1 - bias."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """floor(log2(max)): the OCP MX 'emax_elem' used by the e8m0 floor rule."""
        return math.frexp(self.max)[1] - 1

    @property
    def min_subnormal(self) -> float:
        return math.ldexp(1.0, self.emin - self.mbits)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, self.emin)

    def code_value(self, code: int) -> float:
        """Exact value of one code, NaN/Inf included (the definition the tables use)."""
        mag_code = code & (self.sign_bit - 1)
        sign = -1.0 if code & self.sign_bit else 1.0
        if self.nan_code is not None and mag_code == self.nan_code:
            return math.nan
        if self.inf_code is not None and mag_code == self.inf_code:
            return sign * math.inf
        if self.inf_code is not None and (mag_code >> self.mbits) == (1 << self.ebits) - 1:
            return math.nan  # IEEE-like: all-ones exponent with nonzero mantissa
        return sign * _minifloat_value(mag_code, self.ebits, self.mbits, self.bias)

    def positive_grid(self):
        out = []
        for c in range(self.sign_bit):
            v = self.code_value(c)
            if math.isfinite(v):
                out.append(v)
        return out

    def table(self, device=None) -> torch.Tensor:
        """fp32 tensor of the value of every code, indexed by code."""
        return _element_table(self).to(device) if device is not None else _element_table(self)

    def __repr__(self) -> str:
        return self.name


@lru_cache(maxsize=None)
def _element_table(fmt: ElementFormat) -> torch.Tensor:
    return torch.tensor([fmt.code_value(c) for c in range(1 << fmt.bits)], dtype=torch.float32)


E2M1 = ElementFormat("e2m1", 2, 1, 1, 6.0)
E2M3 = ElementFormat("e2m3", 2, 3, 1, 7.5)
E3M2 = ElementFormat("e3m2", 3, 2, 3, 28.0)
E4M3 = ElementFormat("e4m3", 4, 3, 7, 448.0, nan_code=0x7F)
E5M2 = ElementFormat("e5m2", 5, 2, 15, 57344.0, nan_code=0x7F, inf_code=0x7C)
_ELEMENTS = {f.name: f for f in (E2M1, E2M3, E3M2, E4M3, E5M2)}

UE5M3Convention = Literal["nan_ff", "all_finite", "ieee"]


@dataclass(frozen=True)
class ScaleFormat:
    """An unsigned block-scale format.

    kind ``"e8m0"``: code c means 2**(c - 127), 0xFF is NaN.
    kind ``"minifloat"``: unsigned minifloat (ebits, mbits, bias); ``nan_codes`` lists the
    NaN codes, ``max_code`` the largest finite code; codes above ``max_code`` that are not
    NaN are invalid and decode to NaN too (e.g. UE4M3 codes with bit 7 set).
    kind ``"fp32"``: the scale is stored as an fp32 number.

    ``convention`` only matters for UE5M3: ``nan_ff`` (default; 0xFF is NaN, max code 0xFE
    = 114688), ``all_finite`` (every code finite, max 122880), ``ieee`` (exponent 31 is
    Inf/NaN, max 61440).
    """

    name: str
    kind: Literal["e8m0", "minifloat", "fp32"]
    ebits: int = 0
    mbits: int = 0
    bias: int = 0
    max_code: int = 0
    nan_codes: tuple = ()
    convention: str = ""

    def __post_init__(self):
        if self.kind not in ("e8m0", "minifloat", "fp32"):
            raise ValueError(f"unknown scale kind {self.kind!r}")

    @property
    def bits(self) -> int:
        return 32 if self.kind == "fp32" else 8

    @property
    def has_nan(self) -> bool:
        return self.kind == "fp32" or bool(self.nan_codes)

    @property
    def nan_code(self) -> Optional[int]:
        return self.nan_codes[0] if self.nan_codes else None

    def code_value(self, code: int) -> float:
        if self.kind == "e8m0":
            return math.nan if code == 0xFF else math.ldexp(1.0, code - 127)
        if self.kind == "fp32":
            raise ValueError("fp32 scales have no codes")
        if code in self.nan_codes or code > self.max_code:
            return math.nan
        return _minifloat_value(code, self.ebits, self.mbits, self.bias)

    @property
    def max(self) -> float:
        if self.kind == "fp32":
            return float(torch.finfo(torch.float32).max)
        if self.kind == "e8m0":
            return math.ldexp(1.0, 127)
        return self.code_value(self.max_code)

    @property
    def min(self) -> float:
        """Smallest positive value."""
        if self.kind == "fp32":
            return float(torch.finfo(torch.float32).tiny)
        return self.code_value(1) if self.kind == "minifloat" else math.ldexp(1.0, -127)

    def table(self, device=None) -> torch.Tensor:
        t = _scale_table(self)
        return t.to(device) if device is not None else t

    def __repr__(self) -> str:
        return self.name if not self.convention or self.convention == "nan_ff" else f"{self.name}[{self.convention}]"


@lru_cache(maxsize=None)
def _scale_table(fmt: ScaleFormat) -> torch.Tensor:
    if fmt.kind == "fp32":
        raise ValueError("fp32 scales have no code table")
    return torch.tensor([fmt.code_value(c) for c in range(256)], dtype=torch.float32)


def ue5m3(convention: UE5M3Convention = "nan_ff") -> ScaleFormat:
    """UE5M3 scale format under one of its three conventions (see ScaleFormat)."""
    if convention == "nan_ff":
        return ScaleFormat("ue5m3", "minifloat", 5, 3, 15, max_code=0xFE, nan_codes=(0xFF,), convention=convention)
    if convention == "all_finite":
        return ScaleFormat("ue5m3", "minifloat", 5, 3, 15, max_code=0xFF, nan_codes=(), convention=convention)
    if convention == "ieee":
        return ScaleFormat("ue5m3", "minifloat", 5, 3, 15, max_code=0xF7,
                           nan_codes=tuple(range(0xF8, 0x100)), convention=convention)
    raise ValueError(f"unknown UE5M3 convention {convention!r}; expected nan_ff, all_finite or ieee")


E8M0 = ScaleFormat("e8m0", "e8m0", max_code=0xFE, nan_codes=(0xFF,))
UE4M3 = ScaleFormat("ue4m3", "minifloat", 4, 3, 7, max_code=0x7E, nan_codes=(0x7F,))
UE5M3 = ue5m3("nan_ff")
FP32_SCALE = ScaleFormat("fp32", "fp32")
_SCALES = {"e8m0": E8M0, "ue4m3": UE4M3, "ue5m3": UE5M3, "fp32": FP32_SCALE}


def element_format(name_or_fmt: Union[str, ElementFormat]) -> ElementFormat:
    if isinstance(name_or_fmt, ElementFormat):
        return name_or_fmt
    try:
        return _ELEMENTS[str(name_or_fmt).lower()]
    except KeyError:
        raise ValueError(f"unknown element format {name_or_fmt!r}; known: {sorted(_ELEMENTS)}") from None


def scale_format(name_or_fmt: Union[str, ScaleFormat]) -> ScaleFormat:
    if isinstance(name_or_fmt, ScaleFormat):
        return name_or_fmt
    try:
        return _SCALES[str(name_or_fmt).lower()]
    except KeyError:
        raise ValueError(f"unknown scale format {name_or_fmt!r}; known: {sorted(_SCALES)}") from None


@lru_cache(maxsize=None)
def gaussian_clip_ratio(elem: "ElementFormat") -> float:
    """kappa*, the clipping ratio c / sigma that minimizes E[(x - Q_c(x))^2] for x ~ N(0, 1),
    Q_c rounding to nearest on the element grid g_0 = 0 < g_1 < ... < g_m scaled so that its
    max is c (values beyond c saturate): the MSE-optimal clip of a Gaussian (QuEST).
    With p_i = g_i c / g_m and cell edges e_i at the midpoints (e_0 = 0, e_(m+1) = inf), the
    boundary terms of d/dc cancel (the error is continuous across a midpoint), so
      dMSE/dc = -(4 / g_m) sum_i g_i [phi(e_i) - phi(e_(i+1)) - p_i (Phi(e_(i+1)) - Phi(e_i))],
    whose root on [0.5, 16] is found by bisection in fp64 and rounded to fp32 (E2M1:
    2.9224751, of 2.92247507137...)."""
    grid = sorted(elem.positive_grid())
    top = grid[-1]

    def phi(t):
        return 0.0 if math.isinf(t) else math.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)

    def Phi(t):
        return 0.5 * math.erfc(-t / math.sqrt(2.0))

    def slope(c):
        pts = [g * c / top for g in grid]
        edges = [0.0] + [(pts[i] + pts[i + 1]) / 2 for i in range(len(pts) - 1)] + [math.inf]
        total = 0.0
        for i, (g, p) in enumerate(zip(grid, pts)):
            a, b = edges[i], edges[i + 1]
            total += g * (phi(a) - phi(b) - p * (Phi(b) - Phi(a)))
        return -4.0 / top * total

    lo, hi = 0.5, 16.0          # the slope is negative at lo and positive at hi
    for _ in range(200):
        mid = (lo + hi) / 2
        if slope(mid) < 0:
            lo = mid
        else:
            hi = mid
    return float(torch.tensor((lo + hi) / 2, dtype=torch.float32))


FOUR_OVER_SIX_MODES = ("off", "mse", "mae")
FOUR_OVER_SIX_ALT = 4.0      # the second block-max target of Four Over Six (the first is E2M1's max, 6)


@dataclass(frozen=True)
class QuantFormat:
    """Block-scaled format: elements, scales, and how blocks are cut.

    1D blocks: ``block_size`` consecutive elements along ``axis``.
    2D blocks (``block_2d=True``): ``block_size x block_size`` tiles over the last two
    dimensions, so a matrix and its transpose share scales.
    ``scale_rule``: ``floor``/``ceil``/``even``/``rceil`` (e8m0 only) or ``amax``;
    ``scale_rounding``: how ``amax`` rounds the scale into its format, ``nearest`` (ties to
    even) or ``up`` (nothing clips).  ``tensor_scale``: NVFP4-style second level fp32 scale.
    ``division``: how a value is divided by a scale. ``ieee`` (default): correctly rounded
    quotients, scale_hp = (amax / elem_max) * S_enc, s_eff = decode / S_enc, x / s_eff.
    ``reciprocal``: multiplication by fp32 reciprocals, as NVIDIA's kernels and Transformer
    Engine compute: scale_hp = amax * (S_enc * fp32(1 / elem_max)), s_eff = decode * fp32(1 /
    S_enc), x * min(fp32(1 / s_eff), fp32 max). The two differ only near rounding ties; with
    power-of-two scales and no tensor scale (MX formats) they are identical.
    ``four_over_six`` (Four Over Six, adaptive block scaling; E2M1 elements with minifloat
    scales): each block takes the better of two scales, the one mapping its amax to 6 (the
    element max) and the one mapping it to 4. "Better" is the lower round-to-nearest error of
    the dequantized block: the sum of squared ("mse") or absolute ("mae") errors, summed as a
    pairwise tree in fp32 (``reference.scales.four_over_six_codes``). Ties keep 6. The tensor
    scale maps the tensor amax to scale_max * 4 instead of scale_max * 6, so that neither
    candidate's scale overflows.
    ``scale_statistic``: what a block's scale maps to the element max. ``amax`` (default): the
    block's max |x|. ``gaussian`` (QuEST): the MSE-optimal clipping value of a Gaussian with the
    block's RMS, c = (kappa * sqrt(S / n)) * amax with S = pairwise sum of (x / amax)^2 over the
    n elements of the block (padding included) and kappa = ``gaussian_clip_ratio(element)``
    (2.9224751 for E2M1), all in fp32, clamped to the fp32 max (c = 0 when amax = 0, NaN or Inf
    when amax is); elements beyond the clipping value saturate, by design. ``rfloor`` (e8m0):
    2^floor(log2(c / elem_max)), QuEST/Quartet's rounding of that scale.
    ``pre_scale`` (e8m0 scales, no tensor scale): a constant factor p applied before the scale
    rule's scale is applied, as a fixed second-level scale S_enc = p: the block's code is the
    rule's code for its amax (unchanged), s_eff = decode / p, so the elements are x / s_eff =
    p x / decode; the stored tensor scale is p. With the ``floor`` rule, p = 3/4 keeps every
    block max on the grid (p * amax / decode < 3/4 * 8 = 6): the "3/4 pre-scale" of Tseng et al.
    and of Quartet's backward pass.
    """

    element: ElementFormat = E2M1
    scale: ScaleFormat = E8M0
    block_size: int = 32
    axis: int = -1
    block_2d: bool = False
    tensor_scale: bool = False
    scale_rule: ScaleRule = "floor"
    scale_rounding: Literal["nearest", "up"] = "nearest"
    name: str = ""
    division: Literal["ieee", "reciprocal"] = "ieee"
    four_over_six: Literal["off", "mse", "mae"] = "off"
    scale_statistic: Literal["amax", "gaussian"] = "amax"
    pre_scale: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "element", element_format(self.element))
        object.__setattr__(self, "scale", scale_format(self.scale))
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or not 8 <= self.block_size <= 128 \
                or self.block_size % 2:
            raise ValueError(f"block_size must be an even integer in [8, 128], got {self.block_size!r}")
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise TypeError(f"axis must be an int, got {type(self.axis).__name__} {self.axis!r}")
        for flag in ("block_2d", "tensor_scale"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be a bool, got {getattr(self, flag)!r}")
        if self.scale_rule not in E8M0_RULES + ("amax",):
            raise ValueError(f"unknown scale_rule {self.scale_rule!r}")
        if self.scale.kind == "e8m0" and self.scale_rule not in E8M0_RULES:
            raise ValueError(f"e8m0 scales take scale_rule in {E8M0_RULES}, got {self.scale_rule!r}")
        if self.scale.kind != "e8m0" and self.scale_rule != "amax":
            raise ValueError(f"{self.scale.name} scales take scale_rule='amax', got {self.scale_rule!r}")
        if self.scale_rounding not in ("nearest", "up"):
            raise ValueError(f"scale_rounding must be 'nearest' or 'up', got {self.scale_rounding!r}")
        if self.division not in ("ieee", "reciprocal"):
            raise ValueError(f"division must be 'ieee' or 'reciprocal', got {self.division!r}")
        if self.tensor_scale and self.scale.kind != "minifloat":
            raise ValueError(f"a tensor scale needs minifloat block scales (ue4m3, ue5m3): S_enc = scale_max * "
                             f"elem_max / amax overflows fp32 for {self.scale.name} scales (max {self.scale.max:.3g}), "
                             f"whose range needs no second level")
        if self.block_2d and self.axis not in (-1,):
            raise ValueError("2D blocks tile the last two dimensions; leave axis=-1")
        if self.four_over_six not in FOUR_OVER_SIX_MODES:
            raise ValueError(f"four_over_six must be one of {FOUR_OVER_SIX_MODES}, got {self.four_over_six!r}")
        if self.four_over_six != "off" and (self.element.name != "e2m1" or self.scale.kind != "minifloat"):
            raise ValueError("four_over_six chooses between the E2M1 grid points 6 and 4 with a minifloat block "
                             f"scale; this format has {self.element.name} elements and {self.scale.name} scales")
        if self.scale_statistic not in SCALE_STATISTICS:
            raise ValueError(f"scale_statistic must be one of {SCALE_STATISTICS}, got {self.scale_statistic!r}")
        if self.scale_statistic != "amax" and self.four_over_six != "off":
            raise ValueError("four_over_six compares scales mapping the block amax to 6 and 4; it does not combine "
                             "with scale_statistic='gaussian'")
        if self.scale_statistic != "amax" and self.scale.kind == "fp32":
            raise ValueError("scale_statistic='gaussian' needs 8-bit block scales (e8m0, ue4m3, ue5m3)")
        if isinstance(self.pre_scale, bool) or not isinstance(self.pre_scale, (int, float)):
            raise TypeError(f"pre_scale must be a number, got {self.pre_scale!r}")
        object.__setattr__(self, "pre_scale", float(self.pre_scale))
        if not 0.0 < self.pre_scale <= 1.0 or float(torch.tensor(self.pre_scale, dtype=torch.float32)) != self.pre_scale:
            raise ValueError(f"pre_scale must be an fp32 number in (0, 1], got {self.pre_scale!r}")
        if self.pre_scale != 1.0 and (self.scale.kind != "e8m0" or self.tensor_scale):
            raise ValueError("pre_scale is a fixed second-level scale for e8m0 block scales without a tensor scale "
                             f"(minifloat scales have tensor_scale for that); this format has {self.scale.name} "
                             f"scales{' and a tensor scale' if self.tensor_scale else ''}")

    @property
    def encode_scaled(self) -> bool:
        """Whether the format has a second-level scale S_enc (a tensor scale, or a pre_scale),
        stored as the QuantizedTensor's ``tensor_scale``."""
        return self.tensor_scale or self.pre_scale != 1.0

    @property
    def gaussian_kappa(self) -> float:
        """The clipping ratio of ``scale_statistic='gaussian'`` (``gaussian_clip_ratio``)."""
        return gaussian_clip_ratio(self.element)

    @property
    def scale_target(self) -> float:
        """The element value the tensor scale maps the tensor amax to (per block, the amax
        maps to the element max, or with Four Over Six to 6 or 4)."""
        return FOUR_OVER_SIX_ALT if self.four_over_six != "off" else self.element.max

    def to_dict(self) -> dict:
        """JSON-ready description; ``QuantFormat.from_dict`` inverts it exactly."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["element"] = self.element.name
        d["scale"] = self.scale.name
        if self.scale.convention and self.scale.convention != "nan_ff":
            d["scale_convention"] = self.scale.convention
        # formats without these keep the JSON (and the cache keys) they always had
        for key, default in (("four_over_six", "off"), ("scale_statistic", "amax"), ("pre_scale", 1.0)):
            if d[key] == default:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QuantFormat":
        d = dict(d)
        convention = d.pop("scale_convention", None)
        if convention is not None:
            d["scale"] = ue5m3(convention)
        return cls(**d)

    def replace(self, **changes) -> "QuantFormat":
        """A copy with some fields changed (the name is dropped unless given)."""
        changes.setdefault("name", "")
        return dataclasses.replace(self, **changes)

    @property
    def block_shape(self) -> tuple:
        return (self.block_size, self.block_size) if self.block_2d else (self.block_size,)

    @property
    def bits_per_element(self) -> float:
        """Storage cost: element bits plus the scale amortised over its block."""
        n = self.block_size ** (2 if self.block_2d else 1)
        return self.element.bits + self.scale.bits / n

    def __str__(self) -> str:
        if self.name:
            return self.name
        blocks = f"{self.block_size}x{self.block_size}" if self.block_2d else f"1x{self.block_size}"
        return (f"{self.element.name}/{self.scale!r}/{blocks}/{self.scale_rule}"
                + ("/up" if self.scale_rounding == "up" else "") + ("+tensor" if self.tensor_scale else "")
                + ("+rcp" if self.division == "reciprocal" else "")
                + (f"+4/6({self.four_over_six})" if self.four_over_six != "off" else "")
                + ("+gauss" if self.scale_statistic == "gaussian" else "")
                + (f"*{self.pre_scale:g}" if self.pre_scale != 1.0 else ""))


MXFP4 = QuantFormat(E2M1, E8M0, 32, scale_rule="floor", name="mxfp4")
NVFP4 = QuantFormat(E2M1, UE4M3, 16, tensor_scale=True, scale_rule="amax", name="nvfp4")
UE5M3_FP4 = QuantFormat(E2M1, UE5M3, 16, tensor_scale=True, scale_rule="amax", name="ue5m3")
MXFP8 = QuantFormat(E4M3, E8M0, 32, scale_rule="floor", name="mxfp8")
MXFP6_E2M3 = QuantFormat(E2M3, E8M0, 32, scale_rule="floor", name="mxfp6_e2m3")
MXFP6_E3M2 = QuantFormat(E3M2, E8M0, 32, scale_rule="floor", name="mxfp6_e3m2")
PRESETS = {f.name: f for f in (MXFP4, NVFP4, UE5M3_FP4, MXFP8, MXFP6_E2M3, MXFP6_E3M2)}


def get_format(fmt: Union[str, QuantFormat]) -> QuantFormat:
    """A QuantFormat, or the preset a string names ("mxfp4", "nvfp4", "ue5m3", ...)."""
    if isinstance(fmt, QuantFormat):
        return fmt
    if isinstance(fmt, str):
        try:
            return PRESETS[fmt.lower()]
        except KeyError:
            raise ValueError(f"unknown format {fmt!r}; presets: {sorted(PRESETS)}") from None
    raise TypeError(f"expected a QuantFormat or a preset name, got {type(fmt).__name__}")


def clips_block_max(fmt: QuantFormat) -> bool:
    """Whether ``fmt``'s block scale can put a block's maximum beyond the element max, where
    it saturates: the e8m0 ``floor`` and ``even`` rules (values in (6, 8) scale units clip
    for E2M1), and minifloat scales rounded to nearest (rounded down by up to half a scale
    ulp). Stochastic rounding is unbiased only where nothing saturates."""
    if fmt.scale_statistic == "gaussian":
        return True          # the Gaussian clipping value sits below the block max by design
    if fmt.scale.kind == "e8m0":
        if fmt.scale_rule == "rfloor":
            return True
        # floor/even: the block max lands in [2^emax, 2^(emax+1)) scale units (even: below
        # 2^(emax+1) after rounding), times the pre-scale
        return fmt.scale_rule in ("floor", "even") and fmt.pre_scale * 2.0 ** (fmt.element.emax + 1) > fmt.element.max
    if fmt.scale.kind == "minifloat":
        return fmt.scale_rounding != "up"
    return False


def nonclipping(fmt: QuantFormat) -> QuantFormat:
    """The counterpart of ``fmt`` whose block scale cannot clip the block maximum, the one
    stochastic rounding uses by default: e8m0 ``floor``/``even`` become ``rceil``
    (2^ceil(log2(amax / elem_max))), minifloat scales are rounded up instead of to nearest;
    ``ceil``/``rceil``/upward/fp32 scales are returned unchanged. The name is dropped, so the
    format describes itself (e.g. ``e2m1/e8m0/1x32/rceil``)."""
    if not clips_block_max(fmt):
        return fmt
    if fmt.scale_statistic == "gaussian":
        raise ValueError(f"{fmt}: the Gaussian clipping scale (scale_statistic='gaussian') clips by design, so "
                         "stochastic rounding with it is biased; pass sr_clipping=True to use it anyway, or "
                         "quantize stochastic operands with the amax statistic")
    if fmt.scale.kind == "e8m0":
        return fmt.replace(scale_rule="rceil")
    return fmt.replace(scale_rounding="up")


def effective_format(fmt: QuantFormat, rounding: str, sr_clipping: bool = False) -> QuantFormat:
    """The format a quantizer runs for ``rounding``: ``nonclipping(fmt)`` for stochastic
    rounding unless ``sr_clipping`` asks for the format's own (clipping, hence biased) scale."""
    if not isinstance(sr_clipping, bool):
        raise TypeError(f"sr_clipping must be a bool, got {sr_clipping!r}")
    return nonclipping(fmt) if rounding == "stochastic" and not sr_clipping else fmt
