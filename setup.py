"""Builds lowprec._C.

C++ CPU kernels are always built.  CUDA kernels are built when LOWPREC_BUILD_CUDA is
"1", or "auto" (the default) and both a CUDA-enabled torch and nvcc are present;
"0" skips them.  Nothing is fetched: build with `pip install -e . --no-build-isolation`
against the torch already installed.
"""

import glob
import os
import platform
import shutil

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError as e:  # pragma: no cover - the message is the point
    raise SystemExit("lowprec's build needs torch installed first (pip install torch==2.13.0 for CPU), "
                     "then: pip install -e . --no-build-isolation") from e

HERE = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    mode = os.environ.get("LOWPREC_BUILD_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"LOWPREC_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    has_cuda = torch.version.cuda is not None and shutil.which("nvcc") is not None
    if mode == "1" and not has_cuda:
        raise SystemExit("LOWPREC_BUILD_CUDA=1 but torch has no CUDA build or nvcc is missing")
    return mode == "1" or (mode == "auto" and has_cuda)


def extensions():
    include = [os.path.join(HERE, "csrc", "include")]
    cpu_sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # SSE4.1 (every x86-64 CPU since 2008) turns rint/floor into single instructions so the
    # element loops vectorize; -ffp-contract=off keeps a*b+c from fusing, which would change bits;
    # -fno-math-errno lets sqrt be one instruction (it only drops the errno write, not IEEE results).
    cxx = ["-O3", "-fopenmp", "-std=c++17", "-ffp-contract=off", "-fno-math-errno"]
    if platform.machine() in ("x86_64", "AMD64"):
        cxx.append("-msse4.1")
    if want_cuda():
        sources = cpu_sources + ["csrc/cuda_ops.cpp"] + sorted(glob.glob("csrc/cuda/*.cu"))
        arch = os.environ.get("LOWPREC_CUDA_ARCH", "-gencode=arch=compute_80,code=sm_80 "
                                                   "-gencode=arch=compute_90a,code=sm_90a").split()
        return [CUDAExtension("lowprec._C", sources, include_dirs=include,
                              define_macros=[("LOWPREC_WITH_CUDA", None)],
                              extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17", "--fmad=false"] + arch},
                              extra_link_args=["-fopenmp"])]
    return [CppExtension("lowprec._C", cpu_sources, include_dirs=include,
                         extra_compile_args=cxx, extra_link_args=["-fopenmp"])]


# sparse/ ships as lowprec.sparse: a top-level `sparse` would clash with PyData's package.
PACKAGES = find_packages(include=["lowprec", "lowprec.*"]) + ["lowprec.sparse"]

setup(packages=PACKAGES, package_dir={"lowprec.sparse": "sparse"}, ext_modules=extensions(), cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)})
