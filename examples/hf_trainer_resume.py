"""End to end with Hugging Face: convert a (tiny) Llama to NVFP4 training, train it with
Trainer, stop at a checkpoint, resume, save with save_pretrained, load with
lowprec.load_pretrained, and check that every step was exact.

    python examples/hf_trainer_resume.py [--out DIR] [--recipe nvfp4]

Runs on a CPU in well under a minute; CI runs it.  Replace the tiny config with
``AutoModelForCausalLM.from_pretrained(...)`` and the dataset with yours for a real run.
"""

import argparse
import os
import tempfile

import torch
import transformers

import lowprec


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg)


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n=32, seq=16):
        self.ids = torch.randint(0, 128, (n, seq), generator=torch.Generator().manual_seed(1))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def train(model, out_dir, steps, resume=None):
    args = transformers.TrainingArguments(
        output_dir=out_dir, max_steps=steps, per_device_train_batch_size=4, learning_rate=3e-3,
        save_strategy="steps", save_steps=steps // 2, logging_strategy="no", report_to=[], use_cpu=True,
        seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=RandomTokens())
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="working directory (default: a temporary one)")
    p.add_argument("--recipe", default="nvfp4")
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="lowprec-hf-")

    def converted():
        return lowprec.convert_model(tiny_llama(), args.recipe, module_filter_fn=lambda m, n: "lm_head" not in n)

    straight = converted()
    train(straight, os.path.join(out, "straight"), args.steps)

    first = converted()                     # the same run; pretend it died after the middle checkpoint
    train(first, os.path.join(out, "interrupted"), args.steps)
    ckpt = os.path.join(out, "interrupted", f"checkpoint-{args.steps // 2}")
    resumed = converted()
    train(resumed, os.path.join(out, "resumed"), args.steps, resume=ckpt)
    diff = max((a - b).abs().max().item() for a, b in zip(straight.state_dict().values(),
                                                          resumed.state_dict().values()) if a.is_floating_point())
    print(f"resumed from {ckpt}: max |difference| to the uninterrupted run = {diff}")

    saved = os.path.join(out, "saved")
    resumed.save_pretrained(saved)
    loaded = lowprec.load_pretrained(saved)
    ids = RandomTokens().ids[:2]
    with torch.no_grad():
        same = torch.equal(resumed.eval()(input_ids=ids).logits, loaded.eval()(input_ids=ids).logits)
    print(f"save_pretrained -> lowprec.load_pretrained: logits identical = {same}")
    print(loaded.config.lowprec["config"]["recipe"]["name"], "layers:", len(loaded.config.lowprec["converted"]))
    if diff != 0 or not same:
        raise SystemExit("not exact")
    print("exact")


if __name__ == "__main__":
    main()
