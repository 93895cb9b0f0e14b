"""The benchmark tooling: the GPU benchmark scripts run end to end (on CPU tensors with Triton
interpreted, tiny shapes: a smoke run, so they cannot rot unseen between GPU sessions), their
JSON holds what the tables need, and `lowprec bench` prints recorded results."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import lowprec
from lowprec import ops
from lowprec.bench.harness import copy_bandwidth, time_fn
from lowprec.cli import main as cli_main

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
needs_triton = pytest.mark.skipif(not ops.backend_status("triton")[0] or torch.cuda.is_available(),
                                  reason="smoke runs need Triton on CPU tensors (TRITON_INTERPRET=1, no GPU); "
                                         "with a GPU, run the scripts themselves")


def script(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def smoke_run(name, result_name, tmp_path, monkeypatch, *args):
    """Run benchmarks/<name>.py on CPU tensors into tmp_path; its JSON result."""
    monkeypatch.setenv("LOWPREC_BENCH_DIR", str(tmp_path))
    script(name).main(["--device", "cpu", "--repeats", "1", *args])
    return json.loads((tmp_path / f"{result_name}.json").read_text())


def test_time_fn_and_copy_bandwidth_on_cpu():
    t = time_fn(lambda: torch.ones(8).sum(), repeats=3, warmup=1, device="cpu")
    assert 0 < t["min_s"] <= t["median_s"] and t["repeats"] == 3
    c = copy_bandwidth("cpu", 1 << 20, repeats=2)
    assert c["bytes"] == 2 << 20 and c["gb_s"] > 0


@needs_triton
def test_gpu_quantize_script_smoke(tmp_path, monkeypatch):
    out = smoke_run("bench_gpu_quantize", "gpu_quantize", tmp_path, monkeypatch, "--size", "32", "--dtypes", "bf16",
                    "--formats", "nvfp4", "--roundings", "stochastic")
    assert out["smoke_run"] and out["copy_bandwidth"]["gb_s"] > 0
    assert {r["op"] for r in out["rows"]} == {"quantize", "dequantize", "fake_quantize"}
    q = next(r for r in out["rows"] if r["op"] == "quantize")
    assert q["bytes"] == 32 * 32 * 2 + 32 * 32 // 2 + 32 * 32 // 16    # bf16 in; codes and scales out
    assert "cuda" in out["notes"]                                      # no CUDA here: said, not hidden


@needs_triton
def test_gpu_hadamard_script_smoke(tmp_path, monkeypatch):
    out = smoke_run("bench_gpu_hadamard", "gpu_hadamard", tmp_path, monkeypatch, "--size", "32", "--sizes-n", "32",
                    "--formats", "mxfp4", "--roundings", "stochastic")
    ops_seen = {(r["op"], r["impl"]) for r in out["rows"]}
    assert ("hadamard_quantize", "lowprec-triton (fused)") in ops_seen and ("hadamard", "lowprec-cpp") in ops_seen
    assert "fast-hadamard-transform" in out["notes"]


@needs_triton
def test_gpu_gemm_script_smoke(tmp_path, monkeypatch):
    rows = smoke_run("bench_gpu_gemm", "gpu_gemm", tmp_path, monkeypatch, "--sizes", "64", "--formats", "nvfp4")["rows"]
    ours = next(r for r in rows if r["format"] == "nvfp4")
    assert ours["tflops"] > 0 and ours["max_rel_err"] < 1e-5


def test_gpu_scripts_refuse_cpu_without_the_interpreter(monkeypatch):
    from lowprec.bench.gpu import bench_device
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="TRITON_INTERPRET"):
            bench_device("auto")
        with pytest.raises(SystemExit, match="no CUDA GPU"):
            bench_device("cuda")
    with pytest.raises(ValueError, match="--device"):
        bench_device("tpu")


def test_lowprec_bench_prints_recorded_results(tmp_path, capsys):
    rows = [{"impl": "a", "gb_s": 1234.5}, {"impl": "b", "gb_s": 0.5, "extra": True}]
    (tmp_path / "demo_result.json").write_text(json.dumps(
        {"benchmark": "demo_result", "environment": {"device": "X1", "commit": "abc"}, "rows": rows,
         "notes": {"peer": "not installed"}}))
    assert cli_main(["bench", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== demo_result (device X1, commit abc)" in out
    assert "extra" in out.splitlines()[1] and "1234" in out and "note: peer: not installed" in out
    with pytest.raises(SystemExit, match="no result named missing.*demo_result"):
        cli_main(["bench", "missing", "--dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="no benchmark results"):
        cli_main(["bench", "--dir", str(tmp_path / "empty")])


def test_auto_backend_names_the_pick():
    expected = "cpp" if ops.backend_status("cpp")[0] else "reference"
    assert ops.auto_backend("quantize", "cpu") == expected
    with pytest.raises(ops.BackendUnavailable, match="no backend implements"):
        ops.auto_backend("no_such_op", "cpu")


@pytest.mark.slow
def test_fsdp_benchmark_runs(tmp_path):
    """benchmarks/bench_fsdp.py end to end at 2 ranks, 3 steps (so it cannot rot)."""
    import os
    import subprocess
    import sys
    out = subprocess.run([sys.executable, str(BENCHMARKS / "bench_fsdp.py"), "--ranks", "2", "--steps", "3"],
                         capture_output=True, text=True, timeout=900, env=dict(os.environ, LOWPREC_BENCH_DIR=str(tmp_path)))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    rows = json.loads((tmp_path / "fsdp_cpu.json").read_text())["rows"]
    assert {(r["optimizer"], r["mode"]) for r in rows} == {(o, m) for o in ("adamw", "adams", "galore")
                                                         for m in ("ddp", "fsdp2")}
    fsdp = {r["optimizer"]: r["state_MiB_per_rank"] for r in rows if r["mode"] == "fsdp2"}
    ddp = {r["optimizer"]: r["state_MiB_per_rank"] for r in rows if r["mode"] == "ddp"}
    assert fsdp["adamw"] < 0.6 * ddp["adamw"] and fsdp["adams"] < 0.6 * ddp["adams"]     # sharded


@needs_triton
def test_gpu_train_step_script_smoke(tmp_path, monkeypatch):
    """The training-step benchmark runs end to end and names the kernels each row ran."""
    out = smoke_run("bench_gpu_train_step", "gpu_train_step", tmp_path, monkeypatch, "--width", "64", "--layers", "1",
                    "--tokens", "32", "--recipes", "nvfp4", "quartet", "--gemm-backend", "kernels")
    rows = {r["model"]: r for r in out["rows"]}
    assert rows["nvfp4"]["kernels"] == "fp4_qgemm" and rows["bf16 nn.Linear"]["vs_bf16"] == 1.0
    assert rows["quartet"]["kernels"] == "fp4_qgemm"                  # the trust mask on the kernel path
    assert rows["nvfp4"]["x_quantizer"] == "row_col_fused"          # 32 tokens x 64: one pass over X
    assert {r["part"] for r in out["gemm_split"]} >= {"quantize X", "quantize W", "fp4 gemm"}
    assert out["smoke_run"]


def test_recipe_cost_table(tmp_path, monkeypatch):
    """Every training preset and full recipe gets a cost; Four Over Six costs more than nvfp4
    (its extra vector work), the full recipe more still (BF16 blocks, late BF16 forward), all
    below bf16."""
    monkeypatch.setenv("LOWPREC_BENCH_DIR", str(tmp_path))
    script("bench_recipe_costs").main()
    rows = {r["recipe"]: r for r in json.loads((tmp_path / "recipe_costs.json").read_text())["rows"]}
    assert set(rows) >= set(lowprec.recipes.TRAINING_PRESETS) | set(lowprec.full_recipes.names())
    assert rows["bf16"]["cost"] == 1.0
    assert rows["nvfp4"]["cost"] < rows["nvfp4_4over6"]["cost"] < rows["nvfp4_4over6_full"]["cost"] < 1.0
    assert rows["nvfp4"]["cost"] < rows["nvfp4_full"]["cost"] < 1.0
    assert rows["nvfp4"]["cost"] < rows["tetrajet2"]["cost"] < rows["nvfp4_4over6"]["cost"]   # 4 bf16 channels
