"""Held-out accuracy of an SFT model in full precision vs the same weights loaded 4-bit NF4 (double quant, fp32
compute: the QLoRA recipes' setting), before any RL step: what quantizing the warm start costs.

Run: .venv/bin/python benchmarks/quantization_drop.py MODEL_DIR [--samples 4]

MODEL_DIR is a trained stage's model, e.g. runs/quickstart/sft/model; the held-out set is the QLoRA recipe's (the
quick start's arithmetic test split, 300 problems, reversed layout). Both loads are scored in the same run.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--samples", type=int, default=4, help="sampled completions per problem (default 4)")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from rewardkit.builtin.datasets import arithmetic
    from rewardkit.builtin.rewards import ExactMatch
    from rewardkit.evaluate import evaluate
    from rewardkit.models import keep_4bit_trainable

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    test = arithmetic(n_train=20000, n_test=300, n_val=200, max_operand=100, format="reversed", seed=0)["test"]
    reward = ExactMatch()

    def exact_match(prompts, completions, **kwargs):
        return reward(prompts, completions, **kwargs)

    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    for label, kw in (("full precision", {}), ("4-bit NF4", {"quantization_config": nf4})):
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, **kw)
        if kw:
            keep_4bit_trainable(model)
        r = evaluate(model, tok, test, exact_match, max_new_tokens=5, batch_size=150, samples=args.samples)
        print(f"{label:>15}: greedy {r['score']:.1%}, sampled {r['sampled_score']:.1%} ({args.samples} per problem)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
