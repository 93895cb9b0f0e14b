"""Precision schedules: the recipe switches at the right optimizer step, the switch changes the
numerics, and the counter is saved with the model so a resumed run switches where an
uninterrupted one does (bit for bit); checkpoint recomputes and gradient accumulation do not
move it; a Trainer run advances it through the callback and resumes it."""

import copy
import os

import pytest
import torch
from torch import nn

import lowprec
from lowprec.schedule import STEP_BUFFER, PrecisionSchedule, PrecisionScheduler, high_precision_forward

FINAL = high_precision_forward("nvfp4", "bf16")


def model():
    torch.manual_seed(0)
    return lowprec.convert_model(nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)), "nvfp4")


def batches(n):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)) for _ in range(n)]


def train(m, opt, data):
    for x, y in data:
        opt.zero_grad()
        (m(x) - y).pow(2).mean().backward()
        opt.step()


def test_schedule_validation_and_json():
    s = PrecisionSchedule.late_switch("nvfp4", FINAL, total_steps=10, last_fraction=0.2)
    assert [p[0] for p in s.phases] == [0, 8]
    assert s.recipe_at(7).name == "nvfp4" and s.recipe_at(8) == FINAL and s.recipe_at(10 ** 6) == FINAL
    assert PrecisionSchedule.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="step 0"):
        PrecisionSchedule(((1, "nvfp4"),))
    with pytest.raises(ValueError, match="increase"):
        PrecisionSchedule(((0, "nvfp4"), (5, "bf16"), (5, "mxfp8")))
    with pytest.raises(ValueError, match="convert the model"):
        PrecisionScheduler(nn.Linear(4, 4), s)
    with pytest.raises(ValueError, match="does not divide"):        # mxfp8 blocks of 32 along a 48-wide layer
        m = lowprec.convert_model(nn.Sequential(nn.Linear(48, 16)), "nvfp4")
        PrecisionScheduler(m, PrecisionSchedule(((0, "nvfp4"), (3, "mxfp8"))))
    # the forward GEMM in bf16, the backward as before
    assert FINAL.fprop.lhs.format == "bf16" and FINAL.dgrad == lowprec.recipes.get("nvfp4").dgrad


def test_switch_happens_at_the_right_step_and_changes_numerics():
    m = model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    sched = PrecisionScheduler(m, PrecisionSchedule.late_switch("nvfp4", FINAL, total_steps=6, last_fraction=0.5))
    sched.attach(opt)
    seen = []
    for x, y in batches(6):
        seen.append(m[0].recipe.name)
        opt.zero_grad()
        (m(x) - y).pow(2).mean().backward()
        opt.step()
    assert seen == ["nvfp4"] * 3 + [FINAL.name] * 3
    assert sched.step_count == 6 and int(m[2].precision_step) == 6
    x = torch.randn(16, 32)
    after = m(x)
    base = copy.deepcopy(m)
    base[0].recipe = base[2].recipe = "nvfp4"
    assert not torch.equal(after, base(x))               # the switch is not a no-op


def test_resume_from_state_dict_switches_at_the_same_step(tmp_path):
    schedule = PrecisionSchedule.late_switch("nvfp4", FINAL, total_steps=8, last_fraction=0.25)
    data = batches(8)
    m = model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    PrecisionScheduler(m, schedule).attach(opt)
    train(m, opt, data)

    m1 = model()
    opt1 = torch.optim.AdamW(m1.parameters(), lr=1e-2)
    PrecisionScheduler(m1, schedule).attach(opt1)
    train(m1, opt1, data[:4])
    torch.save({"model": m1.state_dict(), "opt": opt1.state_dict()}, tmp_path / "ckpt.pt")
    assert STEP_BUFFER in "".join(m1.state_dict())

    m2 = model()                                         # a new process: build, schedule, load
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-2)
    PrecisionScheduler(m2, schedule).attach(opt2)
    ckpt = torch.load(tmp_path / "ckpt.pt")
    m2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert int(m2[0].precision_step) == 4 and m2[0].recipe.name == "nvfp4"
    train(m2, opt2, data[4:])
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k

    m3 = model()                                         # loading past the switch applies the late phase
    s3 = PrecisionScheduler(m3, schedule)
    m3.load_state_dict(m.state_dict())
    assert s3.step_count == 8 and m3[0].recipe == FINAL


def test_accumulation_and_checkpoint_recompute_do_not_move_the_counter():
    from torch.utils.checkpoint import checkpoint
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=1e-2)
    sched = PrecisionScheduler(m, PrecisionSchedule(((0, "nvfp4"), (1, FINAL))))
    sched.attach(opt)
    for x, y in batches(3):                              # three micro-batches, one optimizer step
        out = checkpoint(m, x, use_reentrant=False)
        (out - y).pow(2).mean().backward()
        assert sched.step_count == 0 and m[0].recipe.name == "nvfp4"
    opt.step()
    assert sched.step_count == 1 and m[0].recipe == FINAL


@pytest.mark.slow
def test_trainer_callback_advances_and_resumes(tmp_path):
    transformers = pytest.importorskip("transformers")
    from lowprec.hf import precision_schedule_callback

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 32

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"x": torch.randn(32, generator=g), "labels": torch.randn(32, generator=g)}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = model()

        def forward(self, x, labels=None):
            out = self.body(x)
            return {"loss": (out - labels).pow(2).mean(), "logits": out}

    schedule = PrecisionSchedule.late_switch("nvfp4", FINAL, total_steps=8, last_fraction=0.25)

    def run(out_dir, max_steps, resume=None):
        net = Net()
        sched = PrecisionScheduler(net, schedule)
        args = transformers.TrainingArguments(output_dir=str(out_dir), max_steps=max_steps, per_device_train_batch_size=4,
                                              learning_rate=1e-2, save_steps=4, save_strategy="steps", report_to=[],
                                              logging_strategy="no", use_cpu=True, seed=0, data_seed=0,
                                              dataloader_num_workers=0)
        trainer = transformers.Trainer(model=net, args=args, train_dataset=Data(),
                                       callbacks=[precision_schedule_callback(sched)])
        trainer.train(resume_from_checkpoint=resume)
        return net, sched

    straight, s1 = run(tmp_path / "a", 8)
    assert s1.step_count == 8 and straight.body[0].recipe == FINAL
    run(tmp_path / "b", 8)                        # the same run; resume from its step-4 checkpoint
    resumed, s2 = run(tmp_path / "c", 8, resume=os.path.join(tmp_path / "b", "checkpoint-4"))
    assert s2.step_count == 8
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
