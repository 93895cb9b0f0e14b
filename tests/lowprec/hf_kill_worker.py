"""Trains the tiny Llama of test_hf_trainer.py with Trainer and SIGKILLs itself in the middle
of step 3, after the step-2 checkpoint is on disk: a real interrupted run.

    python hf_kill_worker.py OUT_DIR RECIPE
"""

import os
import signal
import sys

import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_hf_trainer import CONFIGS, Tokens, _args, _llama  # noqa: E402

import lowprec  # noqa: E402


class KillAtStep3(transformers.TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == 2 and os.path.isdir(os.path.join(args.output_dir, "checkpoint-2")):
            print("checkpoint-2 written; killing the run", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    out, name = sys.argv[1], sys.argv[2]
    model = lowprec.convert_model(_llama(), CONFIGS[name], module_filter_fn=lambda m, n: "lm_head" not in n)
    trainer = transformers.Trainer(model=model, args=_args(out, 4), train_dataset=Tokens(),
                                   callbacks=[KillAtStep3()])
    trainer.train()
    print("not killed", flush=True)
