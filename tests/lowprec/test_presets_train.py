"""Every training preset and full recipe round-trips through JSON and trains the tiny LM with
a bounded loss gap to bf16 (same init, same batches)."""

import pytest

import lowprec
from lowprec.full_recipe import FullRecipe
from lowprec.sim.model import TinyLMConfig
from lowprec.sim.train import TrainConfig, train_once

CFG = TrainConfig(steps=30, batch_size=8, lr=3e-3, model=TinyLMConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64,
                                                                      seq_len=32))
NAMES = list(lowprec.recipes.TRAINING_PRESETS) + lowprec.full_recipes.names()


@pytest.fixture(scope="module")
def bf16_loss():
    return train_once("bf16", 0, CFG).val_loss


@pytest.mark.parametrize("name", NAMES)
def test_preset_json_and_training(name, bf16_loss):
    if name in lowprec.full_recipes.names():
        full = lowprec.full_recipes.get(name)
        assert FullRecipe.from_dict(full.to_dict()) == full
        from lowprec.full_recipe import linear_layer_names
        from lowprec.sim.sources import build_model
        conversion = full.conversion(linear_layer_names(build_model("builtin", CFG.model)))
        result = train_once(conversion, 0, CFG, name=name, setup=lambda m, opt: full.attach(m, CFG.steps, opt))
    else:
        r = lowprec.recipes.get(name)
        assert type(r).from_json(r.to_json()) == r
        result = train_once(r, 0, CFG)
    assert result.val_loss == result.val_loss                      # finite
    assert result.val_loss - bf16_loss < 0.15, (name, result.val_loss, bf16_loss)
    assert result.val_loss < 5.0                                    # learned from ln(256) = 5.55
