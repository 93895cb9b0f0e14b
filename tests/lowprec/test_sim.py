"""Layer 7: the simulate and diagnose commands end to end, on tiny settings."""

import json

import pytest
import torch

import lowprec
from lowprec import cli
from lowprec.diagnose import diagnose, load_user_model, sqnr_db
from lowprec.sim.corpus import byte_tokens, stdlib_docstrings
from lowprec.sim.data import ByteCorpus


def test_corpus_is_real_text_and_batches_are_reproducible():
    text = stdlib_docstrings()
    assert len(text) > 200_000 and "Return" in text
    c = ByteCorpus()
    a = c.batch("train", 4, 16, torch.Generator().manual_seed(1))
    b = c.batch("train", 4, 16, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[0][:, 1:], a[1][:, :-1])
    assert byte_tokens("ab").tolist() == [97, 98]


@pytest.mark.slow
def test_simulate_tiny_all_presets(tmp_path, capsys):
    out = tmp_path / "sim"
    cli.main(["simulate", "--steps", "40", "--batch-size", "8", "--seq-len", "32", "--d-model", "32",
              "--d-ff", "64", "--heads", "2", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    data = json.loads((out / "simulate.json").read_text())
    rows = {r["recipe"]: r for r in data["summary"]}
    assert set(rows) == {"bf16", "mxfp8", "mxfp4", "nvfp4", "ue5m3"}
    assert (out / "simulate_loss.png").stat().st_size > 10_000
    for name in ("nvfp4", "ue5m3"):
        assert abs(rows[name]["gap_to_bf16"]) < 0.1, rows[name]
    assert rows["bf16"]["val_loss"] < 4.5                # it learned something from 5.55 (= ln 256)
    assert "gap to bf16" in printed and "nvfp4" in printed
    # one seed: no spread is claimed (it used to print "± 0.0000"), and the speed columns come
    # from the interleaved timing pass, not from the training loop's clock
    assert "±" not in printed and "one seed" in printed
    assert all(r["val_loss_std"] is None and r["gap_std"] is None for r in rows.values())
    assert all(r["step_time_source"] == "interleaved timing pass (median)" for r in rows.values())


def test_summary_shows_the_spread_of_several_seeds(capsys):
    from lowprec.sim.report import print_summary, summarize
    from lowprec.sim.train import RunResult
    runs = [RunResult(recipe=rec, seed=s, losses=[1.0], final_loss=1.0 + d + s / 10, val_loss=2.0 + d + s / 10,
                      tokens_per_s=1000.0, step_time_s=0.01, skipped_layers={})
            for rec, d in (("bf16", 0.0), ("nvfp4", 0.05)) for s in (0, 1, 2)]
    rows = summarize(runs, "bf16", step_times={"bf16": 0.02, "nvfp4": 0.03}, tokens_per_step=100)
    nv = next(r for r in rows if r["recipe"] == "nvfp4")
    assert abs(nv["gap_to_bf16"] - 0.05) < 1e-12 and nv["gap_std"] < 1e-12 and nv["val_loss_std"] > 0.09
    assert nv["step_time_over_bf16"] == 1.5 and nv["tokens_per_s"] == 100 / 0.03
    print_summary(rows, "bf16")
    assert "± 0.1000" in capsys.readouterr().out


def test_diagnose_builtin_ranks_every_linear(tmp_path):
    path = tmp_path / "d.json"
    rows = cli_rows(["diagnose", "--recipe", "mxfp4", "--json", str(path)])
    assert len(rows) == 9                               # 4 linears x 2 blocks + head
    worst = [r["worst_gemm_sqnr"] for r in rows]
    assert worst == sorted(worst) and all(5 < w < 60 for w in worst)
    saved = json.loads(path.read_text())
    assert saved["recipe"]["name"] == "mxfp4" and len(saved["layers"]) == 9


def cli_rows(argv):
    from lowprec import diagnose as d
    import argparse
    p = argparse.ArgumentParser()
    d.add_arguments(p)
    return d.run(p.parse_args(argv[1:]))


def test_diagnose_finer_recipe_scores_higher():
    from lowprec.diagnose import builtin_model
    model, x, loss = builtin_model(8)
    coarse = {r["layer"]: r for r in diagnose(model, x, loss, "mxfp4")}
    model, x, loss = builtin_model(8)
    fine = {r["layer"]: r for r in diagnose(model, x, loss, "mxfp8")}
    assert all(fine[n]["sqnr_fprop_Y"] > coarse[n]["sqnr_fprop_Y"] + 6 for n in coarse)


def user_factory():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    return m, torch.randn(16, 64)


def test_diagnose_user_model():
    model, inputs, loss = load_user_model(f"{__name__}:user_factory")
    rows = diagnose(model, inputs, loss, "nvfp4")
    assert [r["layer"] for r in rows] and {r["layer"] for r in rows} == {"0", "2"}
    with pytest.raises(ValueError, match="package.module:factory"):
        load_user_model("nocolon")


def test_sqnr():
    x = torch.ones(10)
    assert sqnr_db(x, x) == float("inf")
    assert sqnr_db(x, x * 1.1) == pytest.approx(20.0)


def test_diagnose_a_converted_model_warns_and_diagnoses_its_plain_form():
    """A converted model used to give an empty table (its layers are not plain nn.Linear)."""
    from lowprec.diagnose import builtin_model, diagnose
    model, inputs, loss_fn = builtin_model(8, 0)
    plain_rows = diagnose(model, inputs, loss_fn, "nvfp4")
    converted = lowprec.convert_model(model, "mxfp4")
    with pytest.warns(UserWarning, match="already converted"):
        rows = diagnose(converted, inputs, loss_fn, "nvfp4")
    assert len(rows) == len(plain_rows) == 9
    assert [r["worst_gemm_sqnr"] for r in rows] == [r["worst_gemm_sqnr"] for r in plain_rows]
    assert lowprec.convert.converted_modules(converted)          # the user's model is left converted
