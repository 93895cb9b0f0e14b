"""Layer 2: backends against the reference (rtol=0, atol=0), dispatch errors, CUDA compile."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import lowprec
from lowprec import ops

ROOT = Path(__file__).resolve().parents[2]


def test_reference_always_available():
    assert "reference" in lowprec.available_backends()


def test_cpp_extension_is_built():
    """The README's install builds lowprec._C; a missing build is a failure, not a skip."""
    ok, why = ops.backend_status("cpp")
    assert ok, f"lowprec._C did not load: {why}"


@pytest.mark.parametrize("seed,offset,numel", [(0, 0, 1), (42, 3, 1000), ((1 << 64) - 1, (1 << 32) - 2, 4099), (5, (1 << 64) - 3, 100),
                                               ((1 << 62) + 5, 1 << 40, 77), (123, 0, 0), (7, 5, 300001)])
def test_cpp_random_bytes_bit_exact(seed, offset, numel):
    ref = lowprec.random_bytes(seed, offset, numel, backend="reference")
    got = lowprec.random_bytes(seed, offset, numel, backend="cpp")
    assert got.dtype == torch.uint8 and torch.equal(got, ref)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_seeds_and_offsets_outside_uint64_are_refused_everywhere(backend):
    for bad, err in ((-1, ValueError), (1 << 64, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(err, match="seed"):
            lowprec.random_bytes(bad, 0, 8, backend=backend)
        with pytest.raises(err, match="offset"):
            lowprec.quantize(torch.randn(4, 32), "mxfp4", rounding="stochastic", seed=1, offset=bad, backend=backend)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "ue5m3", "mxfp8", lowprec.MXFP4.replace(axis=0)], ids=str)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_quantize_bit_exact(fmt, rounding, backend, dtype):
    from lowprec.reference import dequantize as ref_deq
    from lowprec.reference import quantize as ref_q
    x = torch.randn(256, 512, generator=torch.Generator().manual_seed(0)).to(dtype)
    x[3, 7] = float("nan")
    q = lowprec.quantize(x.cuda(), fmt, rounding=rounding, seed=5, offset=1 << 33, backend=backend)
    r = ref_q(x, fmt, rounding=rounding, seed=5, offset=1 << 33)
    assert torch.equal(q.codes.cpu(), r.codes) and torch.equal(q.scales.cpu(), r.scales)
    a, b = lowprec.dequantize(q, backend=backend).cpu(), ref_deq(r)
    assert torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.gpu
def test_cuda_random_bytes_bit_exact():
    ref = lowprec.random_bytes(7, 1 << 33, 100003, backend="reference")
    got = lowprec.random_bytes(7, 1 << 33, 100003, device="cuda", backend="cuda")
    assert torch.equal(got.cpu(), ref)


def test_unavailable_backend_says_why():
    with pytest.raises(lowprec.BackendUnavailable, match="backend 'triton' (is not available: .+|does not implement)"):
        lowprec.random_bytes(1, 0, 8, backend="triton")
    if not torch.cuda.is_available():
        with pytest.raises(lowprec.BackendUnavailable, match="CUDA"):
            lowprec.quantize(torch.zeros(32), "mxfp4", backend="cuda")
    missing = [(op, b) for b in lowprec.available_backends() for op in ("quantize", "hadamard", "random_bytes")
               if b not in ops.implementations(op)]
    for op, b in missing:
        with pytest.raises(lowprec.BackendUnavailable, match=f"does not implement '{op}'"):
            ops.resolve(op, b)
    with pytest.raises(lowprec.BackendUnavailable, match="unknown backend"):
        lowprec.quantize(torch.zeros(32), "mxfp4", backend="fast")


def test_auto_picks_an_implementation_of_the_op():
    assert ops.resolve("random_bytes", "auto", "cpu") is ops.implementations("random_bytes")["cpp"]
    # the cpp quantizers compute MS-EDEN in their own kernel: no adapter around them
    assert ops.resolve("quantize", "auto", "cpu") is ops.implementations("quantize")["cpp"]
    assert ops.resolve("fake_quantize", "auto", "cpu") is ops.implementations("fake_quantize")["cpp"]
    assert ops.resolve("hadamard", "auto", "cpu") is ops.implementations("hadamard")["cpp"]


def test_importing_lowprec_needs_neither_extension_nor_triton():
    code = ("import sys; sys.modules['triton'] = None; sys.modules['lowprec._C'] = None; "
            "import lowprec, torch; lowprec.quantize(torch.randn(4, 32), 'mxfp4'); "
            "print(lowprec.available_backends())")
    out = subprocess.run([os.environ.get("PYTHON", "python"), "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['reference']"


CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed on this machine")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
@pytest.mark.parametrize("src", CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_sources_compile(src, arch, tmp_path):
    """Compile-only check of every CUDA source (CI has nvcc but no GPU)."""
    cmd = ["nvcc", "-c", "-std=c++17", "--fmad=false", f"-I{ROOT / 'csrc' / 'include'}",
           f"-gencode=arch=compute_{arch[3:]},code={arch}", str(src), "-o", str(tmp_path / "k.o")]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("n", [2, 16, 64, 128, 1024])
@pytest.mark.parametrize("inverse", [False, True])
def test_cpp_hadamard_bit_exact(n, inverse):
    if "cpp" not in lowprec.available_backends():
        pytest.skip("lowprec._C is not built")
    x = torch.randn(6, 2 * n, 3, generator=torch.Generator().manual_seed(n))
    for seed in (None, 4):
        ref = lowprec.hadamard(x, n, axis=1, seed=seed, inverse=inverse, backend="reference")
        got = lowprec.hadamard(x, n, axis=1, seed=seed, inverse=inverse, backend="cpp")
        assert torch.equal(ref, got)
    xg = x.clone().requires_grad_(True)
    c = torch.randn_like(x)
    (lowprec.hadamard(xg, n, axis=1, seed=2, backend="cpp") * c).sum().backward()
    assert torch.equal(xg.grad, lowprec.hadamard(c, n, axis=1, seed=2, inverse=True, backend="reference"))


@pytest.mark.parametrize("n", [1, 4, 8, 16, 32, 256])
@pytest.mark.parametrize("shape,axis", [((5, 2, 3), 1), ((7, 2), -1), ((2, 9), 0), ((3, 2, 17), 1), ((2, 16), 0),
                                        ((4, 2, 1), 1), ((2,), 0)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpp_hadamard_axes_bit_exact(n, shape, axis, dtype):
    """Every axis (leading, middle, last), column counts that are not a multiple of the vector
    width, chunks narrower and wider than a vector, and tails of < 16 elements."""
    if "cpp" not in lowprec.available_backends():
        pytest.skip("lowprec._C is not built")
    shape = tuple(d * n if i == axis % len(shape) else d for i, d in enumerate(shape))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(n)).to(dtype)
    for seed in (None, 9):
        for inverse in (False, True):
            ref = lowprec.hadamard(x, n, axis=axis, seed=seed, inverse=inverse, backend="reference")
            got = lowprec.hadamard(x, n, axis=axis, seed=seed, inverse=inverse, backend="cpp")
            assert got.dtype == ref.dtype and torch.equal(ref, got)


def _cuda_include():
    import glob
    for root in [os.environ.get("CUDA_HOME", "")] + sorted(glob.glob("/usr/local/cuda*"), reverse=True):
        if root and (Path(root) / "include" / "cuda_runtime_api.h").exists():
            return Path(root) / "include"
    return None


@pytest.mark.skipif(_cuda_include() is None or shutil.which("g++") is None,
                    reason="no CUDA runtime headers or g++ on this machine")
def test_cuda_bindings_typecheck(tmp_path):
    """Syntax- and type-check csrc/cuda_ops.cpp (the torch side of the CUDA kernels) against
    torch's headers, so a CUDA build never breaks on it. CPU wheels of torch lack one
    CMake-generated header of c10/cuda; an empty stand-in is enough for a check."""
    import sysconfig
    from torch.utils.cpp_extension import include_paths
    shim = tmp_path / "c10" / "cuda" / "impl"
    shim.mkdir(parents=True)
    (shim / "cuda_cmake_macros.h").write_text("#pragma once\n")
    cmd = ["g++", "-std=c++17", "-fsyntax-only", "-DLOWPREC_WITH_CUDA", f"-I{ROOT / 'csrc' / 'include'}",
           *[f"-I{p}" for p in include_paths()], f"-I{sysconfig.get_paths()['include']}", f"-I{tmp_path}",
           f"-I{_cuda_include()}"]
    for src in ("cuda_ops.cpp", "ops.cpp"):
        out = subprocess.run(cmd + [str(ROOT / "csrc" / src)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]
