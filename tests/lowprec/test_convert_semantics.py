"""convert_model / revert_model semantics a user relies on: a module used twice is converted
once and stays shared; converting twice, or with something that is not a config instance, is a
clear error; QuantLinear refuses shapes its recipe cannot block; revert() computes the same
function for every weight layout."""

import pytest
import torch
from torch import nn

import lowprec
from lowprec import sparse


class TwoNames(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 64)
        self.b = self.a              # the same layer under a second name
        self.c = nn.Linear(64, 32)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


@pytest.mark.parametrize("config", ["nvfp4", sparse.SRSTEConfig()], ids=["nvfp4", "srste"])
def test_shared_module_is_converted_once_and_stays_shared(config):
    shared = nn.Linear(64, 64)
    seq = nn.Sequential(shared, nn.ReLU(), shared)
    seq, report = lowprec.convert_model(seq, config, return_report=True)
    assert seq[0] is seq[2] and seq[0] is not shared
    assert report.converted == ["0"]
    m = lowprec.convert_model(TwoNames(), config)
    assert m.a is m.b
    assert len(list(m.parameters())) == len(list(lowprec.revert_model(m).parameters())) == 4   # a, c: nothing doubled
    back = lowprec.revert_model(seq)
    assert back[0] is back[2] and type(back[0]) is nn.Linear


def test_converting_a_converted_model_raises():
    m = lowprec.convert_model(TwoNames(), "nvfp4")
    with pytest.raises(ValueError, match="already converted"):
        lowprec.convert_model(m, "mxfp4")
    with pytest.raises(ValueError, match="already converted"):
        lowprec.convert_model(m, sparse.CASTConfig())
    lowprec.convert_model(lowprec.revert_model(m), "mxfp4")     # fine after a revert


def test_bad_configs_are_type_errors():
    with pytest.raises(TypeError, match="converter config"):
        lowprec.convert_model(TwoNames(), 42)
    with pytest.raises(TypeError, match=r"pass SRSTEConfig\(\)"):
        lowprec.convert_model(TwoNames(), sparse.SRSTEConfig)
    with pytest.raises(TypeError, match="nn.Module"):
        lowprec.convert_model("model", "nvfp4")


def test_quant_linear_refuses_shapes_its_recipe_cannot_block():
    with pytest.raises(ValueError, match="multiple of 16"):
        lowprec.QuantLinear(60, 64, recipe="nvfp4")
    lowprec.QuantLinear(60, 64, recipe="bf16")          # nothing to block


def test_revert_computes_the_same_function():
    from transformers.pytorch_utils import Conv1D
    from lowprec.conv1d import QuantConv1D
    for q in (lowprec.QuantLinear(64, 32, recipe="nvfp4"), QuantConv1D(32, 64, recipe="nvfp4")):
        x = torch.randn(5, 64)
        expect = torch.nn.functional.linear(x, q.weight_out_in(), q.bias)
        plain = q.revert()
        assert type(plain) is (Conv1D if isinstance(q, QuantConv1D) else torch.nn.Linear)
        assert torch.allclose(plain(x), expect, rtol=0, atol=1e-6)


def test_quant_layers_are_instances_of_what_they_replace():
    """PEFT and transformers dispatch on the layer type: a converted layer must still be one."""
    from transformers.pytorch_utils import Conv1D
    m = lowprec.convert_model(torch.nn.Sequential(torch.nn.Linear(64, 32), Conv1D(32, 64)), "nvfp4")
    assert isinstance(m[0], torch.nn.Linear) and isinstance(m[0], lowprec.QuantLinear)
    assert isinstance(m[1], Conv1D) and not isinstance(m[1], torch.nn.Linear)
    assert m[1].weight.shape == (64, 32) and m[1].nf == 32 and m[1].nx == 64


def test_per_layer_recipe_map():
    """convert_model takes {layer-name pattern: recipe or None}; the first match decides."""
    from lowprec.config_io import from_jsonable, to_jsonable
    from lowprec.recipe_map import RecipeMap
    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    m, report = lowprec.convert_model(m, {"0": None, "1": "mxfp8", "*": "nvfp4"}, return_report=True)
    assert type(m[0]) is torch.nn.Linear and m[1].recipe.name == "mxfp8" and m[2].recipe.name == "nvfp4"
    assert report.converted == ["1", "2"] and "high precision" in report.skipped["0"]
    rm = RecipeMap({"0": None, "1": "mxfp8", "*": "nvfp4"})
    import json     # transformers writes config.json with sorted keys: the order must survive that
    back = from_jsonable(json.loads(json.dumps(to_jsonable(rm), sort_keys=True)))
    assert back == rm and list(back.rules) == ["0", "1", "*"]
    unmatched = lowprec.convert_model(torch.nn.Sequential(torch.nn.Linear(64, 64)), {"x*": "nvfp4"},
                                      return_report=True)[1]
    assert "no RecipeMap pattern" in unmatched.skipped["0"]
    with pytest.raises(ValueError, match="unknown recipe"):
        lowprec.convert_model(torch.nn.Sequential(torch.nn.Linear(64, 64)), {"*": "nvfp5"})


@pytest.mark.parametrize("config", ["nvfp4", "mxfp4", "bf16", "srste", "ast_slorb", "cast", "sparse_nvfp4", "conv1d"])
def test_converted_layer_outputs_are_not_views(config):
    """A converted layer's output is a view only where nn.Linear's is (2-D inputs: never; 3-D:
    F.linear itself returns a view, QuantLinear does not).  FSDP2 hooks a module's output for its backward all-gather; an in-place op on
    a view output (``y += residual``) drops that hook and silently skips it.  QuantLinear used
    to return ``y.reshape(...)``, a view even when the shape did not change."""
    from lowprec import sparse
    torch.manual_seed(0)
    if config == "conv1d":
        from transformers.pytorch_utils import Conv1D
        model, recipe = nn.Sequential(Conv1D(32, 32)), "nvfp4"
    else:
        model = nn.Sequential(nn.Linear(32, 32))
        recipe = {"srste": sparse.SRSTEConfig(), "ast_slorb": sparse.ASTConfig(slorb_k=4), "cast": sparse.CASTConfig(),
                  "sparse_nvfp4": sparse.SparseFP4Config(sparse.ASTConfig(), "nvfp4")}.get(config, config)
    layer = lowprec.convert_model(model, recipe)[0]
    assert type(layer).__module__.startswith("lowprec"), type(layer)
    for shape in ((8, 32), (2, 4, 32)):
        x = torch.randn(*shape)
        y = layer(x)
        assert not y._is_view() or nn.Linear(32, 32)(x)._is_view(), (config, shape)
        if config in ("nvfp4", "mxfp4", "bf16", "conv1d"):
            assert not y._is_view(), (config, shape)
        assert y.shape == (*shape[:-1], 32)
