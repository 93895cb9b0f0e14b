"""How the multi-process test workers leave their gloo group.

Every rank waits at a barrier, destroys the group, flushes its streams and ends with
``os._exit(0)``. Skipping the interpreter's teardown is deliberate. The process group is
still referenced by the model (DDP, FSDP2's device mesh), so without this its C++ threads are
destroyed during interpreter finalization, and under load that has aborted a rank with
"terminate called without an active exception" (SIGABRT) after all of its work was done and
saved. Everything a worker hands back is written and closed (``torch.save``, ``dcp.save``)
before it gets here.
"""

import os
import sys

import torch.distributed as dist


def leave_group():
    """Barrier, destroy the default group, flush stdout/stderr, exit the process with status 0."""
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
