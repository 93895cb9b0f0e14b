"""Hugging Face models: the conversion travels with ``save_pretrained`` and comes back with
one call.

``convert_model`` records what it did in ``model.config.lowprec`` whenever the model has a
transformers config: the conversion config (lowprec.config_io), the seed, and the names of
the converted layers.  ``model.save_pretrained(path)`` then writes it to config.json, and the
weights file holds every lowprec state tensor (SR seeds and offsets, masks, step counters,
SLoRB factors), since they are persistent buffers.  To load::

    model = lowprec.load_pretrained(path)            # or load_pretrained(path, LlamaForCausalLM)

builds the original architecture with ``from_pretrained``, converts the same layers the same
way, and loads the saved state strictly: the model (and the stochastic-rounding stream it
continues) is the one that was saved.  ``from_pretrained`` of the original class alone would
give the unconverted model and ignore the lowprec state, so this call is the one to use.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from typing import Iterable, Optional

import torch

from .config_io import from_jsonable, to_jsonable

KEY = "lowprec"
FORMAT_VERSION = 1


def record_conversion(model, config, seed: int, converted: Iterable[str]) -> None:
    """Write the conversion into ``model.config.lowprec`` (a no-op for models without a
    transformers-style config)."""
    hf_config = getattr(model, "config", None)
    if hf_config is None or not callable(getattr(hf_config, "to_dict", None)):
        return
    try:
        described = to_jsonable(config)
    except TypeError as e:
        described = {"unrecordable": str(e)}
    setattr(hf_config, KEY, {"version": FORMAT_VERSION, "config": described, "seed": int(seed),
                             "converted": list(converted)})


def read_state(path: str) -> dict:
    """Every tensor saved under ``path`` (model.safetensors, a sharded index, or pytorch_model.bin)."""
    from safetensors.torch import load_file
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(single):
        return load_file(single)
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        state = {}
        for name in files:
            state.update(load_file(os.path.join(path, name)))
        return state
    binary = os.path.join(path, "pytorch_model.bin")
    if os.path.exists(binary):
        return torch.load(binary, weights_only=True)
    raise FileNotFoundError(f"no model.safetensors, sharded index or pytorch_model.bin under {path}")


@contextmanager
def _quiet_transformers():
    """from_pretrained of the plain class warns about the lowprec keys it does not know;
    they are loaded right after, so the warning would only mislead."""
    logger = logging.getLogger("transformers.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_pretrained(path: str, model_class=None, **from_pretrained_kwargs):
    """The converted model saved under ``path`` by ``save_pretrained``, with its state.

    ``model_class``: the transformers class to build (default: the first of the config's
    ``architectures``).  Raises when ``path`` holds no lowprec conversion, or when a saved
    tensor does not fit the rebuilt model."""
    import transformers
    from .convert import convert_model

    hf_config = transformers.AutoConfig.from_pretrained(path)
    rec = getattr(hf_config, KEY, None)
    if not isinstance(rec, dict):
        raise ValueError(f"{path} records no lowprec conversion (config.json has no {KEY!r} entry); "
                         "it is a plain model: load it with from_pretrained")
    if "unrecordable" in rec["config"]:
        raise ValueError(f"{path} was converted with a config lowprec cannot rebuild: {rec['config']['unrecordable']}")
    if rec.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} records lowprec conversion format {rec.get('version')}, this lowprec reads "
                         f"{FORMAT_VERSION}")
    if model_class is None:
        archs = getattr(hf_config, "architectures", None) or []
        if not archs or not hasattr(transformers, archs[0]):
            raise ValueError(f"{path}: config.json names no transformers architecture; pass model_class")
        model_class = getattr(transformers, archs[0])
    state = read_state(path)
    conversion = from_jsonable(rec["config"], state)
    with _quiet_transformers():
        model = model_class.from_pretrained(path, **from_pretrained_kwargs)
    names = set(rec["converted"])
    model = convert_model(model, conversion, module_filter_fn=lambda m, n: n in names, seed=rec["seed"])
    _load_exactly(model, state, path)
    return model


def _load_exactly(model, state: dict, path: str) -> None:
    """load_state_dict that allows only the keys save_pretrained drops for tied weights."""
    current = model.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{path} holds tensors the rebuilt model has no place for: {unexpected[:5]}")
    saved_ptrs = {current[k].data_ptr() for k in state if k in current}
    untied = [k for k in missing if current[k].data_ptr() not in saved_ptrs]
    if untied:
        raise ValueError(f"{path} lacks tensors of the rebuilt model: {untied[:5]}")


def precision_schedule_callback(scheduler):
    """A transformers ``TrainerCallback`` that advances a ``lowprec.schedule.PrecisionScheduler``
    after every optimizer step of a ``Trainer`` (the Trainer builds its optimizer itself, so
    ``scheduler.attach(optimizer)`` is not available there). On ``resume_from_checkpoint`` the
    Trainer loads the model's state_dict, which restores the counters and re-applies the phase."""
    from transformers import TrainerCallback

    class PrecisionScheduleCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            scheduler.step()

    return PrecisionScheduleCallback()
