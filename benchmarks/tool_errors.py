"""Where the tool recipe's held-out errors are: each greedy episode of ``tool_multiplication`` sorted by the length
of the right product, whether the final answer is right, and whether the tool was called with the problem's own
operands (docs/environments.md, "Why GRPO stops near 80%").

    .venv/bin/python benchmarks/tool_errors.py RUN/sft/model RUN/grpo/model [--recipe RECIPE.yaml]

The held-out split, its size, the episode length and batch come from the recipe's ``eval`` section and its data
from the recipe's ``data`` section, the episodes from its environment stage, as the run's
own evaluation plays them. One line per model: counts of (product digits, answer right, operands right).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def breakdown(model_dir: str, recipe, registry) -> collections.Counter:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewardkit import episodes

    data = registry.load("datasets", recipe.data["name"])(**(recipe.data.get("params") or {}))[recipe.eval.split]
    rows = [dict(r) for r in data.select(range(min(recipe.eval.n or len(data), len(data))))]
    generator = episodes.from_recipe(recipe, registry).with_rows(rows)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        answers = generator(model, tokenizer, [r["prompt"] for r in rows], recipe.eval.max_new_tokens,
                            batch_size=recipe.eval.batch_size)
    counts: collections.Counter = collections.Counter()
    for row, answer, episode in zip(rows, answers, generator.episodes):
        a, b = (int(x) for x in row["prompt"][-1]["content"].rstrip("=").split("*"))
        call = next((t for t in episode.transcript if "tool" in t), None)
        operands_right = call is not None and call.get("arguments") == {"a": a, "b": b}
        counts[(len(row["answer"]), answer.strip() == row["answer"], operands_right)] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="saved model folders (a run's <stage>/model)")
    ap.add_argument("--recipe", default=os.path.join(ROOT, "recipes", "cpu", "tool_multiplication_grpo.yaml"))
    a = ap.parse_args(argv)
    from rewardkit.recipe import load_recipe
    from rewardkit.registry import get_registry

    registry = get_registry()
    recipe = load_recipe(a.recipe, registry=registry)
    print("(product digits, answer right, operands right): episodes")
    for model_dir in a.models:
        counts = breakdown(model_dir, recipe, registry)
        print(f"{model_dir}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
