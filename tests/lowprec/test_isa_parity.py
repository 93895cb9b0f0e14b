"""The CPU kernels' vector building blocks give the scalar reference bits at every x86 level.

The extension compiles its hot loops once per ISA level (target_clones: AVX-512, AVX2,
baseline) and the loader runs the best one, so a test run of the extension exercises only the
level of the CPU it runs on. isa_parity.cpp compiles the same headers at each level the CPU
can run and checks every lane operation against the scalar functions of csrc/include/lowprec.
"""

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEVELS = {"avx512f": ["-mavx512f"], "avx2": ["-mavx2"], "baseline": []}


def _cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the ISA levels checked are x86 ones")
@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed (it also builds lowprec._C)")
@pytest.mark.parametrize("level", list(LEVELS))
def test_vector_blocks_match_scalar_reference(level, tmp_path):
    if level != "baseline" and level not in _cpu_flags():
        pytest.skip(f"this CPU cannot run {level} code")
    exe = tmp_path / f"isa_parity_{level}"
    cmd = ["g++", "-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-Wno-psabi", *LEVELS[level],
           f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'csrc' / 'cpu'}",
           str(ROOT / "tests" / "lowprec" / "isa_parity.cpp"), "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and ran.stdout.startswith("ok"), ran.stdout + ran.stderr
