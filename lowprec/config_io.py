"""Conversion configs as JSON: a Recipe, or any frozen-dataclass converter config (the sparse
configs), nested configs included, so that a saved model can say how it was converted.

    to_jsonable(ASTConfig(slorb_k=8))
      == {"class": "lowprec.sparse.configs.ASTConfig", "fields": {"n": 2, ..., "slorb_k": 8}}

A field holding a dict of tensors (Wanda's ``input_norms``) is written as
``{"tensors_from_state": "input_norm"}``: the tensors are in the model's state_dict, and
``from_jsonable(d, state)`` rebuilds the dict from it."""

from __future__ import annotations

import dataclasses
import importlib

import torch

from .recipe import Recipe


def to_jsonable(config):
    if isinstance(config, Recipe):
        return {"recipe": config.to_dict()}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        fields = {}
        for f in dataclasses.fields(config):
            v = getattr(config, f.name)
            if isinstance(v, dict) and v and all(torch.is_tensor(t) for t in v.values()):
                fields[f.name] = {"tensors_from_state": "input_norm"}
            elif isinstance(v, dict) and any(isinstance(t, Recipe) for t in v.values()):
                # a list of pairs: the order matters (first match wins) and transformers writes
                # config.json with sorted keys
                fields[f.name] = {"ordered_recipes": [[k, to_jsonable(t) if t is not None else None]
                                                      for k, t in v.items()]}
            elif isinstance(v, Recipe) or dataclasses.is_dataclass(v):
                fields[f.name] = to_jsonable(v)
            else:
                fields[f.name] = v
        cls = type(config)
        return {"class": f"{cls.__module__}.{cls.__qualname__}", "fields": fields}
    raise TypeError(f"cannot record a conversion config of type {type(config).__name__} "
                    "(a Recipe or a frozen dataclass config can be recorded)")


def from_jsonable(d, state: dict = None):
    if "recipe" in d:
        return Recipe.from_dict(d["recipe"])
    module, _, name = d["class"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    fields = {}
    for k, v in d["fields"].items():
        if isinstance(v, dict) and "ordered_recipes" in v:
            fields[k] = {key: (from_jsonable(t) if t is not None else None) for key, t in v["ordered_recipes"]}
        elif isinstance(v, dict) and "tensors_from_state" in v:
            suffix = "." + v["tensors_from_state"]
            fields[k] = {key[:-len(suffix)]: t for key, t in (state or {}).items() if key.endswith(suffix)}
        elif isinstance(v, dict) and ("recipe" in v or "class" in v):
            fields[k] = from_jsonable(v, state)
        else:
            fields[k] = v
    return cls(**fields)
