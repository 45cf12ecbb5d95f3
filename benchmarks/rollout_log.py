"""What the rollout log costs a GRPO step: its own write time as a share of the training time, measured in the
same run (rewardkit/rollout_log.py times every write), at the default setting and at a heavy one.

Run: .venv/bin/python benchmarks/rollout_log.py [--steps 40] [--groups 2 8]

The stage is the quick start's GRPO stage (tiny Llama, 64 completions per step: 8 prompts × 8, 5 new tokens),
from the untrained tiny model (timing does not need a warm start), one run per ``--groups`` value with the log
writing every rollout. The goal (issue 29): at most 2% of step time at the default (2 groups per rollout).
A paired run without the log is also timed; on a shared machine its difference is noise-dominated, so the
self-timed share is the figure to quote.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def correct(prompts, completions, answer, **kwargs):
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


def run(steps: int, groups: int | None, out: str) -> tuple[float, float, int]:
    """(train seconds, log seconds, records) of one GRPO run; ``groups`` None: no log."""
    from transformers import AutoTokenizer

    from rewardkit import models, rollout_log
    from rewardkit.builtin.datasets import arithmetic
    from rewardkit.registry import get_registry
    from rewardkit.trainers.dynamic_sampling import DynamicSamplingGRPOConfig, DynamicSamplingGRPOTrainer

    path = models.resolve("tiny-llama", get_registry())
    ds = arithmetic(n_train=2000, n_test=8, format="reversed")["train"]
    args = DynamicSamplingGRPOConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=64,
                                     num_generations=8, max_completion_length=5, learning_rate=1e-4,
                                     report_to="none", save_strategy="no", logging_steps=steps, bf16=False,
                                     seed=0, disable_tqdm=True, gradient_checkpointing=False)
    tr = DynamicSamplingGRPOTrainer(model=path, args=args, train_dataset=ds,
                                    processing_class=AutoTokenizer.from_pretrained(path), reward_funcs=[correct])
    if groups is not None:
        tr.rollout_log = rollout_log.RolloutLog(os.path.join(out, rollout_log.FILE), groups=groups)
    start = time.perf_counter()
    tr.train()
    total = time.perf_counter() - start
    log = tr.rollout_log
    return total, (log.seconds if log else 0.0), (log.records if log else 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--groups", type=int, nargs="+", default=[2, 8])
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base, _, _ = run(args.steps, None, os.path.join(tmp, "off"))
        print(f"no log: {args.steps} steps in {base:.1f} s ({base / args.steps * 1000:.0f} ms/step)")
        for g in args.groups:
            total, spent, records = run(args.steps, g, os.path.join(tmp, f"g{g}"))
            print(f"groups {g} ({records} records): {total:.1f} s, writing {spent:.3f} s = {spent / total:.2%} of "
                  f"the training time (self-timed); paired wall-clock vs no log {total / base:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
