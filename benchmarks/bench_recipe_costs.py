"""The cost of each training recipe and full recipe in the cost model (lowprec.sim.cost).

Cost = estimated time of the linear layers per training step relative to bf16 GEMMs with no
quantization (bf16 = 1.0), on a Blackwell-class GPU (the model's stated rates). It is computed
on one LLaMA-7B block (hidden 4096, MLP 11008, 8192 tokens), the sweep's reference shape. A
full recipe mixes its parts: its BF16 blocks cost 1.0, for a 32-block model (LLaMA-7B) as its
rule picks them, and its late switch runs the BF16-forward recipe for the last share of the
steps.

Usage: python benchmarks/bench_recipe_costs.py   (prints the table, writes
benchmarks/results/recipe_costs.json)
"""

from lowprec import full_recipes, recipes
from lowprec.bench.harness import write_results
from lowprec.sim.cost import Machine, relative_cost
from lowprec.sim.sweep import REFERENCE_BLOCK, reference_layers

TOKENS = 8192
N_BLOCKS = 32          # LLaMA-7B


def preset_cost(recipe, machine) -> float:
    return relative_cost(reference_layers(), TOKENS, lambda n: recipe, machine)


def full_cost(full, machine) -> dict:
    kept_share = len(full.kept_blocks(N_BLOCKS)) / N_BLOCKS
    base = (1 - kept_share) * preset_cost(full.recipe, machine) + kept_share
    late = (1 - kept_share) * preset_cost(full.switch_to, machine) + kept_share
    cost = (1 - full.switch_fraction) * base + full.switch_fraction * late
    return {"cost": cost, "bf16_block_share": kept_share, "switch_fraction": full.switch_fraction}


def main():
    machine = Machine()
    rows = []
    for name in recipes.TRAINING_PRESETS:
        rows.append({"recipe": name, "kind": "preset", "cost": preset_cost(recipes.get(name), machine)})
    for name in full_recipes.names():
        rows.append({"recipe": name, "kind": "full recipe", **full_cost(full_recipes.get(name), machine)})
    nv = next(r["cost"] for r in rows if r["recipe"] == "nvfp4")
    print(f"cost relative to bf16 on {REFERENCE_BLOCK}, {machine.name}")
    print(f"{'recipe':20s} {'kind':12s} {'cost':>6s} {'vs nvfp4':>9s}")
    for r in rows:
        r["vs_nvfp4"] = r["cost"] / nv
        print(f"{r['recipe']:20s} {r['kind']:12s} {r['cost']:6.3f} {r['vs_nvfp4']:9.3f}")
    path = write_results("recipe_costs", rows, extra={"reference": REFERENCE_BLOCK, "machine": machine.__dict__,
                                                       "n_blocks": N_BLOCKS})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
