"""convert_model / revert_model: one module walker for every kind of layer swap.

``config`` is any object with ``can_convert(module) -> bool`` and
``convert_module(module, name) -> nn.Module | str`` (a string is the reason the layer is
skipped).  lowprec's ``Recipe`` is one; the ``sparse`` package's configs are others, so
lowprec never imports sparse.  A converted module that has ``revert()`` is swapped back
by ``revert_model``.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from torch import nn

from .recipe import Recipe, get

log = logging.getLogger("lowprec")


@dataclass
class ConversionReport:
    converted: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)     # name -> reason
    filtered: List[str] = field(default_factory=list)         # excluded by module_filter_fn

    def summary(self) -> str:
        lines = [f"converted {len(self.converted)} layers, skipped {len(self.skipped)}, "
                 f"filtered out {len(self.filtered)}"]
        lines += [f"  skipped {n}: {why}" for n, why in self.skipped.items()]
        return "\n".join(lines)


def _convert_one(config, module, name, seed):
    if "seed" in inspect.signature(config.convert_module).parameters:
        return config.convert_module(module, name, seed=seed)
    return config.convert_module(module, name)


def convert_model(model: nn.Module, config, module_filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
                  *, seed: int = 0, return_report: bool = False):
    """Swap every layer ``config`` can convert (in place) and return the model.

    ``config``: a Recipe, a recipe name ("nvfp4", ...), a dict {layer-name pattern: recipe or
    None} (lowprec.recipe_map.RecipeMap: the first matching pattern decides), or any converter
    config.
    ``module_filter_fn(module, fully_qualified_name)`` returning False keeps a layer as is.
    Layers whose shapes cannot be blocked are skipped, logged, and listed in the report
    (``return_report=True`` returns ``(model, report)``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_model takes an nn.Module, got {type(model).__name__}")
    if isinstance(config, str):
        config = get(config)
    if isinstance(config, dict):
        from .recipe_map import RecipeMap
        config = RecipeMap(config)
    if inspect.isclass(config):
        raise TypeError(f"convert_model takes a config instance, got the class {config.__name__}: "
                        f"pass {config.__name__}()")
    if not isinstance(config, Recipe) and not (callable(getattr(config, "can_convert", None))
                                               and callable(getattr(config, "convert_module", None))):
        raise TypeError(f"convert_model takes a Recipe, a recipe name or a converter config (with can_convert "
                        f"and convert_module), got {type(config).__name__} {config!r}")
    already = converted_modules(model)
    if already:
        raise ValueError(f"the model is already converted ({len(already)} lowprec layers, e.g. {already[0]!r}); "
                         f"convert it once, or revert_model(model) first")
    if isinstance(config, Recipe):
        from .nn import QuantLinear

        class _RecipeConverter:
            def can_convert(self, m):
                return QuantLinear.accepts(m)

            def convert_module(self, m, name, seed=0):
                return QuantLinear.from_module(m, config, name=name, seed=seed)
        converter = _RecipeConverter()
    else:
        converter = config
    report = ConversionReport()
    replaced: Dict[int, nn.Module] = {}    # id(original) -> its replacement: a module used twice is converted once

    def visit(module: nn.Module, prefix: str):
        tuner = is_peft_tuner_layer(module)
        for child_name, child in all_children(module):
            fqn = f"{prefix}.{child_name}" if prefix else child_name
            if tuner and child_name != "base_layer":     # LoRA A/B, dropout, ...: left as they are
                for sub_name, sub in child.named_modules():
                    if converter.can_convert(sub):
                        report.skipped[f"{fqn}.{sub_name}" if sub_name else fqn] = PEFT_ADAPTER_REASON
                continue
            if id(child) in replaced:
                setattr(module, child_name, replaced[id(child)])
                continue
            new = _maybe_convert(child, fqn)
            if new is not None:
                replaced[id(child)] = new
                setattr(module, child_name, new)
            else:
                visit(child, fqn)

    def _maybe_convert(m: nn.Module, fqn: str):
        if not converter.can_convert(m):
            return None
        if module_filter_fn is not None and not module_filter_fn(m, fqn):
            report.filtered.append(fqn)
            return None
        new = _convert_one(converter, m, fqn, seed)
        if isinstance(new, str):
            report.skipped[fqn] = new
            log.warning("lowprec: skipped %s: %s", fqn, new)
            return None
        report.converted.append(fqn)
        return new

    root = _maybe_convert(model, "")
    if root is not None:
        model = root
    else:
        visit(model, "")
    log.info("lowprec: %s", report.summary().splitlines()[0])
    if report.converted:
        from .hf import record_conversion
        record_conversion(model, config, seed, report.converted)   # model.config.lowprec, for save_pretrained
    return (model, report) if return_report else model


PEFT_ADAPTER_REASON = ("PEFT adapter: kept in high precision (only the wrapped base layer is converted; "
                       "convert an adapter explicitly if you mean to quantize it)")


def is_peft_tuner_layer(module: nn.Module) -> bool:
    """A PEFT layer wrapping a base layer (LoRA and the other tuners), detected without
    importing peft: a class named BaseTunerLayer from the peft package in its MRO."""
    return any(c.__name__ == "BaseTunerLayer" and c.__module__.startswith("peft") for c in type(module).__mro__)


def all_children(module: nn.Module):
    """(name, child) under every name, a child registered twice included (named_children()
    yields a shared module once, which would leave its second name unconverted)."""
    return [(n, c) for n, c in list(module._modules.items()) if c is not None]


def converted_modules(model: nn.Module) -> List[str]:
    """Names of the modules that are lowprec replacements (they know how to ``revert``)."""
    return [n or "<root>" for n, m in model.named_modules() if callable(getattr(m, "revert", None))]


def revert_model(model: nn.Module) -> nn.Module:
    """Swap every converted layer back to its original type (same parameters)."""
    if hasattr(model, "revert") and callable(model.revert):
        return model.revert()
    reverted: Dict[int, nn.Module] = {}     # a shared replacement reverts to one shared module

    def visit(module: nn.Module):
        for child_name, child in all_children(module):
            if id(child) in reverted:
                setattr(module, child_name, reverted[id(child)])
            elif hasattr(child, "revert") and callable(child.revert):
                reverted[id(child)] = child.revert()
                setattr(module, child_name, reverted[id(child)])
            else:
                visit(child)
    visit(model)
    hf_config = getattr(model, "config", None)
    if hf_config is not None and getattr(hf_config, "lowprec", None) is not None:
        hf_config.lowprec = None           # a reverted model saves as the plain model it now is
    return model


def quant_modules(model: nn.Module):
    """(name, module) of every module that owns a stochastic-rounding stream."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "rng_state")]


def rng_state(model: nn.Module) -> dict:
    """Seeds and Philox offsets of every quantized layer (save it with your checkpoint)."""
    return {n: m.rng_state() for n, m in quant_modules(model)}


def load_rng_state(model: nn.Module, state: dict) -> None:
    mods = dict(quant_modules(model))
    missing = set(state) ^ set(mods)
    if missing:
        raise KeyError(f"rng state does not match the model's quantized layers: {sorted(missing)}")
    for n, s in state.items():
        mods[n].load_rng_state(s)
