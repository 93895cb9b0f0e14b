"""Layer 3b, reliability: hypothesis over every public op (quantize, fake_quantize, dequantize
and q.dequantize, hadamard, nm_mask, compress_24, random_bytes, hand-built QuantizedTensors,
the GaLore moment and update kernels) on every backend present, with zero-size dims,
non-contiguous and expanded views, every input dtype, NaN / +-Inf / -0 / subnormals, extreme
and invalid seeds and offsets. Each backend must give the reference's result bit for bit or
the reference's error, same type and text; backend='auto' never refuses what the reference
accepts. The cases run in a child process (reliability_worker.py): a kernel that crashes
(SIGFPE, SIGSEGV, SIGBUS) fails the test with the input that did it instead of killing the run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("reliability_worker.py")
EXAMPLES = {"quantize": 300, "hand_built": 150, "hadamard": 150, "sparsity": 100, "random_bytes": 80, "galore": 1}


@pytest.mark.parametrize("group", sorted(EXAMPLES))
def test_reliability_group(group):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(WORKER), group, str(EXAMPLES[group])], capture_output=True, text=True,
                          timeout=1200, env=env, stdin=subprocess.DEVNULL)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode < 0:   # killed by a signal: the last line names the input
        pytest.fail(f"the worker crashed with signal {-proc.returncode} on: {lines[-1] if lines else '?'}")
    assert proc.returncode == 0 and lines and lines[-1] == "ALL CASES HELD", \
        "\n".join(lines[-5:]) + "\n" + proc.stderr[-4000:]
