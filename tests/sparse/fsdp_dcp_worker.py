"""Kill-and-resume through torch.distributed.checkpoint under FSDP2 (2 gloo processes): a run
that saves a distributed checkpoint after 2 steps and exits, resumed by new processes for 2
more steps, must end bit for bit where an uninterrupted 4-step run ends: sharded weights,
sharded optimizer state (moments, AdamS masks as DTensors), GaLore's projectors and
counters, AST masks and step counters.

    python fsdp_dcp_worker.py OUT_DIR {straight | first | resume | resume4} CASE

``resume4`` loads the 2-rank checkpoint into 4 ranks (DCP reshards the DTensor state) and is
compared with one process that does what 2 ranks and then 4 ranks do: masks, counters and SR
offsets exactly, weights within 1e-6 (gloo sums four ranks' gradients in its own order).
"""

import datetime
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fsdp_worker import (CASES, TOKENS_PER_RANK, WORLD, batches, full_state, model, optimizer,  # noqa: E402
                         train_as_two_ranks)
from gloo_exit import leave_group  # noqa: E402


def build(name):
    from torch.distributed.fsdp import fully_shard
    m = model(CASES[name])
    for layer in m:
        if any(p.requires_grad for p in layer.parameters()):
            fully_shard(layer)
    fully_shard(m)
    return m, optimizer(name, m)


def steps(m, opt, data, rank, world=WORLD):
    per_rank = TOKENS_PER_RANK * WORLD // world
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    for x, y in data:
        opt.zero_grad()
        (m(x[rows]) - y[rows]).pow(2).mean().backward()
        opt.step()


def worker(rank, out_dir, phase, name):
    world = 4 if phase == "resume4" else WORLD
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300),
                            init_method="file://" + os.path.join(out_dir, f"rendezvous_{phase}"))
    m, opt = build(name)
    data = batches()
    ckpt = os.path.join(out_dir, "dcp")
    if phase == "straight":
        steps(m, opt, data, rank)
    elif phase == "first":
        steps(m, opt, data[:2], rank)
        model_sd, optim_sd = get_state_dict(m, opt)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=ckpt)
    else:
        model_sd, optim_sd = get_state_dict(m, opt)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=ckpt)
        set_state_dict(m, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        steps(m, opt, data[2:], rank, world)
    if phase != "first":
        state = full_state(m)
        if rank == 0:
            torch.save(state, os.path.join(out_dir, f"{phase}.pt"))
    leave_group()


if __name__ == "__main__":
    out_dir, phase, name = sys.argv[1:4]
    mp.spawn(worker, args=(out_dir, phase, name), nprocs=4 if phase == "resume4" else WORLD, join=True)
    if phase == "resume4":
        m = model(CASES[name])
        opt = optimizer(name, m)
        data = batches()
        train_as_two_ranks(m, opt, data[:2], world=2)
        train_as_two_ranks(m, opt, data[2:], world=4)
        want = {k: v for k, v in m.state_dict().items()}
        got = torch.load(os.path.join(out_dir, "resume4.pt"))
        worst = 0.0
        for k in want:      # masks, counters, offsets exact; weights up to the order gloo sums 4 ranks in
            if want[k].is_floating_point():
                worst = max(worst, (want[k] - got[k]).abs().max().item())
                assert worst <= 1e-6, (name, k, worst)
            else:
                assert torch.equal(want[k], got[k]), (name, k)
        print(f"{name}: 2-rank checkpoint resumed on 4 ranks == one process doing the same "
              f"(max |difference| {worst:.1e})", flush=True)
    if phase == "resume":
        a = torch.load(os.path.join(out_dir, "straight.pt"))
        b = torch.load(os.path.join(out_dir, "resume.pt"))
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k, (a[k].float() - b[k].float()).abs().max())
        print(f"{name}: resumed through torch.distributed.checkpoint == uninterrupted", flush=True)
