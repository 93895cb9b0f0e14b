"""The FP4 training design space the sweep explores, one knob per technique.

A point is a dict of knobs; ``build(point)`` turns it into a Recipe (and a per-layer rule for
which layers stay in high precision). Knobs and their values:

- ``format``: the element and scale format of every quantized operand: ``nvfp4`` (E2M1, UE4M3
  scales, blocks of 16, tensor scale), ``mxfp4`` (E2M1, E8M0, 32), ``ue5m3`` (E2M1, UE5M3, 16,
  tensor scale), or ``bf16`` (the unquantized baseline; the other knobs are then ignored);
- ``block_size``: 16 or 32 (None: the format's);
- ``tensor_scale``: a second-level fp32 scale (None: the format's);
- ``weight_tiles``: weights in 2-D block x block tiles (True) or 1-D blocks along K (False);
- ``hadamard``: random-sign block Hadamard size (0: none); ``hadamard_gemms``: ``wgrad`` (both
  wgrad operands, NVIDIA's choice) or ``all`` (every GEMM); ``hadamard_random``: random signs;
- ``sr``: stochastic rounding on ``none``, ``grads`` (dY in dgrad and wgrad) or ``backward``
  (every backward operand);
- ``estimator``: the forward quantizers' gradient estimator (``ste``, ``clipped_ste``,
  ``scale_grad``);
- ``high_layers``: ``head`` (only the output head in high precision) or ``first_last`` (also
  the linear layers of the first and last blocks);
- ``late_switch``: the last fraction of the training steps runs the forward GEMMs in bf16
  (a ``lowprec.schedule`` late switch; 0: none);
- ``four_over_six``: Four Over Six block scales (``off``, ``mse``, ``mae``) on every operand
  rounded to nearest (minifloat-scale formats only);
- ``unbiased``: how the stochastic operands (``sr``) are made unbiased: ``sr`` (element-wise
  stochastic rounding) or ``ms_eden`` (Quartet II's MS-EDEN: stochastic block scales);
- ``outlier_channels``: OutControl, the input channels of largest |x| computed in bf16 (0: none).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from typing import Optional

from ..formats import get_format
from ..full_recipe import block_index
from ..recipe import GemmConfig, OperandConfig, Recipe, get

DEFAULTS = {"format": "nvfp4", "block_size": None, "tensor_scale": None, "weight_tiles": True, "hadamard": 16,
            "hadamard_gemms": "wgrad", "hadamard_random": True, "sr": "grads", "estimator": "ste",
            "high_layers": "head", "late_switch": 0.0, "four_over_six": "off", "unbiased": "sr",
            "outlier_channels": 0}
CHOICES = {"format": ("nvfp4", "mxfp4", "ue5m3", "bf16"), "hadamard_gemms": ("wgrad", "all"),
           "sr": ("none", "grads", "backward"), "estimator": ("ste", "clipped_ste", "scale_grad"),
           "high_layers": ("head", "first_last"), "four_over_six": ("off", "mse", "mae"),
           "unbiased": ("sr", "ms_eden")}


def normalize(point: dict) -> dict:
    """The point with every knob (defaults filled in), checked; bf16 points collapse to one."""
    unknown = sorted(set(point) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown knobs {unknown}; the design space has {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **{k: v for k, v in point.items() if v is not None or k in ("block_size", "tensor_scale")}}
    if p["format"] == "bf16":
        if p["high_layers"] not in CHOICES["high_layers"]:
            raise ValueError(f"high_layers must be one of {CHOICES['high_layers']}, got {p['high_layers']!r}")
        return {**{k: None for k in DEFAULTS}, "format": "bf16", "high_layers": p["high_layers"]}
    for k, allowed in CHOICES.items():
        if p[k] not in allowed:
            raise ValueError(f"{k} must be one of {allowed}, got {p[k]!r}")
    p["outlier_channels"] = int(p["outlier_channels"] or 0)
    if p["outlier_channels"] < 0:
        raise ValueError(f"outlier_channels is a count >= 0, got {p['outlier_channels']}")
    p["late_switch"] = float(p["late_switch"] or 0.0)
    if not 0 <= p["late_switch"] < 1:
        raise ValueError(f"late_switch is a fraction of the steps in [0, 1), got {p['late_switch']}")
    fmt = get_format(p["format"])           # None means the format's own: resolve it, so equal points compare equal
    p["block_size"] = fmt.block_size if p["block_size"] is None else int(p["block_size"])
    p["tensor_scale"] = fmt.tensor_scale if p["tensor_scale"] is None else bool(p["tensor_scale"])
    return p


def label(point: dict) -> str:
    """A short readable name for a point."""
    p = normalize(point)
    if p["format"] == "bf16":
        return "bf16" + ("" if p["high_layers"] == "head" else f" {p['high_layers']}")
    fmt = get_format(p["format"])
    parts = [p["format"], f"b{p['block_size'] or fmt.block_size}"]
    ts = fmt.tensor_scale if p["tensor_scale"] is None else p["tensor_scale"]
    parts.append("ts" if ts else "no-ts")
    parts.append("W2d" if p["weight_tiles"] else "W1d")
    if p["hadamard"]:
        parts.append(f"H{p['hadamard']}{'r' if p['hadamard_random'] else ''}@{p['hadamard_gemms']}")
    else:
        parts.append("noH")
    parts.append(f"SR:{p['sr']}")
    if p["estimator"] != "ste":
        parts.append(p["estimator"])
    if p["high_layers"] != "head":
        parts.append(p["high_layers"])
    if p["late_switch"]:
        parts.append(f"late-bf16-fwd:{p['late_switch']:g}")
    if p["four_over_six"] != "off":
        parts.append(f"4/6:{p['four_over_six']}")
    if p["unbiased"] != "sr":
        parts.append(p["unbiased"].replace("ms_eden", "MS-EDEN"))
    if p["outlier_channels"]:
        parts.append(f"out{p['outlier_channels']}xbf16")
    return " ".join(parts)


def build_recipe(point: dict) -> Recipe:
    p = normalize(point)
    if p["format"] == "bf16":
        return get("bf16")
    fmt = get_format(p["format"])
    if p["block_size"] is not None:
        fmt = fmt.replace(block_size=int(p["block_size"]))
    if p["tensor_scale"] is not None:
        fmt = fmt.replace(tensor_scale=bool(p["tensor_scale"]))
    w_fmt = fmt.replace(block_2d=bool(p["weight_tiles"]))
    random = "stochastic" if p["unbiased"] == "sr" else "ms_eden"
    sr_grads = random if p["sr"] in ("grads", "backward") else "nearest"
    sr_other = random if p["sr"] == "backward" else "nearest"
    h_all = p["hadamard"] if p["hadamard_gemms"] == "all" else 0
    rnd = bool(p["hadamard_random"])

    def op(f, rounding="nearest"):
        if p["four_over_six"] != "off" and rounding != "ms_eden":    # MS-EDEN chooses the scale itself
            f = f.replace(four_over_six=p["four_over_six"])
        return OperandConfig(f, rounding)
    fprop = GemmConfig(op(fmt), op(w_fmt), hadamard=h_all, hadamard_random=rnd)
    dgrad = GemmConfig(op(fmt, sr_grads), op(w_fmt, sr_other), hadamard=h_all, hadamard_random=rnd)
    wgrad = GemmConfig(op(fmt, sr_grads), op(fmt, sr_other), hadamard=p["hadamard"], hadamard_random=rnd)
    return Recipe(label(p), fprop, dgrad, wgrad, estimator=p["estimator"], outlier_channels=p["outlier_channels"])


def high_precision_rule(point: dict, linear_names: list):
    """name -> True for the layers ``high_layers`` keeps in high precision (beyond the head,
    which the simulator always keeps)."""
    p = normalize(point)
    if p["high_layers"] == "head":
        return lambda name: False
    idx = [i for i in (block_index(n) for n in linear_names) if i is not None]
    if not idx:
        raise ValueError("high_layers='first_last' needs numbered blocks in the layer names")
    ends = {min(idx), max(idx)}
    return lambda name: block_index(name) in ends


def conversion(point: dict, linear_names: list):
    """What convert_model takes for this point: a Recipe, or a per-layer map."""
    recipe = build_recipe(point)
    keep = high_precision_rule(point, linear_names)
    kept = [n for n in linear_names if keep(n)]
    if not kept:
        return recipe
    from ..plan import fnmatch_escape
    return {**{fnmatch_escape(n): None for n in kept}, "*": recipe}


def schedule_setup(point: dict, steps: int):
    """For a point with ``late_switch``: a function (model, optimizer) that attaches the
    precision schedule; None otherwise."""
    p = normalize(point)
    if not p.get("late_switch"):
        return None
    from ..schedule import PrecisionSchedule, PrecisionScheduler, high_precision_forward
    recipe = build_recipe(p)
    schedule = PrecisionSchedule.late_switch(recipe, high_precision_forward(recipe, "bf16"), steps, p["late_switch"])

    def setup(model, optimizer):
        PrecisionScheduler(model, schedule).attach(optimizer)
    return setup


def point_key(point: dict, context: dict) -> str:
    """The cache key of a run: the point's recipe (every field), its layer rule and the run's
    context (training config, model, data, seed). Changing any of them is a different run."""
    p = normalize(point)
    payload = {"recipe": build_recipe(p).to_dict(), "high_layers": p["high_layers"], "context": context}
    if p.get("late_switch"):        # only when set: runs without a schedule keep their keys
        payload["late_switch"] = p["late_switch"]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def expand(grid: dict, fixed: Optional[dict] = None, n_random: Optional[int] = None, seed: int = 0) -> list:
    """Points of the grid (every combination of the listed values, ``fixed`` knobs added), or
    ``n_random`` of them drawn without replacement; duplicates (e.g. bf16 with any other knob)
    removed, order kept."""
    fixed = fixed or {}
    keys = sorted(grid)
    combos = [dict(zip(keys, values), **fixed) for values in itertools.product(*(grid[k] for k in keys))]
    if n_random is not None and n_random < len(combos):
        combos = random.Random(seed).sample(combos, n_random)
    seen, out = set(), []
    for c in combos:
        n = normalize(c)
        k = json.dumps(n, sort_keys=True)
        if k not in seen:
            seen.add(k)
            out.append(n)
    return out


def parse_grid_flags(items: list) -> dict:
    """["format=nvfp4,ue5m3", "hadamard=0,16", "weight_tiles=true"] -> grid dict."""
    grid = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--grid items look like knob=v1,v2; got {item!r}")
        k, vs = item.split("=", 1)
        grid[k.strip()] = [_value(v) for v in vs.split(",")]
    return grid


def _value(v: str):
    v = v.strip()
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    if v.lower() == "none":
        return None
    try:
        return int(v)
    except ValueError:
        return v
