"""Runs a validated recipe: stages in order, each starting from the previous stage's model."""

from __future__ import annotations

import json
import os
import time

from rewardkit import models
from rewardkit.data import load_data
from rewardkit.registry import _import_target
from rewardkit.trainers.base import LogHistoryCallback, StageContext


def _log(msg: str) -> None:
    print(f"[rewardkit] {msg}", flush=True)


class _DataCache:
    def __init__(self, recipe, registry):
        self.recipe, self.registry, self._cache = recipe, registry, {}

    def get(self, data: dict, where: str):
        key = json.dumps(data, sort_keys=True, default=str)
        if key not in self._cache:
            self._cache[key] = load_data(self.recipe, data, self.registry, where)
        return self._cache[key]


def _evaluator(recipe, registry):
    if not recipe.eval:
        return None
    from rewardkit.evaluate import evaluate  # noqa: PLC0415

    block = recipe.eval["reward"]
    block = block if isinstance(block, dict) else {"name": block}
    fn = registry.build_reward(block["name"], block.get("params") or {}, alias="eval")
    split = recipe.eval.get("split", "test")

    def run(model, tokenizer, dataset):
        if split not in dataset:
            from rewardkit.errors import RecipeError  # noqa: PLC0415

            raise RecipeError(f"eval.split: the dataset has no '{split}' split (has {', '.join(dataset)}); "
                              f"add data.test_size or data.test_path")
        return evaluate(model, tokenizer, dataset[split], fn, recipe.eval.get("max_new_tokens", 16),
                        recipe.eval.get("batch_size", 64), recipe.eval.get("n"))

    return run


def _plot_rewards(log_path: str, png_path: str) -> str | None:
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    rows = [json.loads(line) for line in open(log_path)] if os.path.exists(log_path) else []
    rows = [r for r in rows if "reward" in r]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["reward"] for r in rows], label="reward (mean)")
    for key in sorted({k for r in rows for k in r if k.startswith("rewards/") and k.endswith("/mean")}):
        ax.plot([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r], alpha=0.6,
                label=key.split("/")[1])
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def run(recipe, registry) -> dict:
    """Train every stage; return (and write to ``output_dir/summary.json``) what happened."""
    import datasets  # noqa: PLC0415
    import torch  # noqa: PLC0415
    from transformers import AutoTokenizer, set_seed  # noqa: PLC0415

    datasets.disable_progress_bars()  # keep the trainers' progress bars readable
    set_seed(recipe.seed)
    os.makedirs(recipe.output_dir, exist_ok=True)
    data = _DataCache(recipe, registry)
    evaluate = _evaluator(recipe, registry)
    summary = {"recipe": recipe.path, "output_dir": recipe.output_dir, "stages": [], "eval": []}
    start = time.time()

    model_path = models.resolve(recipe.model["name"], registry, recipe)
    if evaluate:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        base = models.load_for_inference(model_path, recipe.model)
        result = evaluate(base, tokenizer, data.get(recipe.data, "data"))
        del base
        summary["eval"].append({"after": "base", **result})
        _log(f"base model: held-out score {result['score']:.1%} on {result['n']} examples")

    previous = None
    for spec in recipe.stages:
        stage_start = time.time()
        stage_model = previous or models.resolve(spec.model["name"], registry, recipe)
        out_dir = os.path.join(recipe.output_dir, spec.name)
        _log(f"stage '{spec.name}' ({spec.trainer_type}) from {stage_model}")
        tokenizer = AutoTokenizer.from_pretrained(stage_model)
        stage_cls = registry.load("trainers", spec.trainer_type)
        rewards = [registry.build_reward(b.name, b.params, b.alias) for b in spec.rewards]
        log_cb = LogHistoryCallback(os.path.join(out_dir, "log.jsonl"))
        if os.path.exists(log_cb.path):
            os.remove(log_cb.path)
        ctx = StageContext(recipe, spec, registry, stage_model, tokenizer,
                           data.get(spec.data, f"stages.{spec.name}.data"), out_dir, rewards, [log_cb.callback])
        trainer = stage_cls().build_trainer(ctx)
        trainer.train()
        model_dir = models.save_merged(trainer, stage_model, spec.model, os.path.join(out_dir, "model"),
                                       _import_target(stage_cls.model_class))
        info = {"name": spec.name, "trainer": spec.trainer_type, "model_dir": model_dir,
                "steps": trainer.state.global_step, "seconds": round(time.time() - stage_start, 1),
                **(getattr(trainer, "summary_metrics", None) or {})}
        # A stage whose result is not a policy (a reward model) is neither evaluated by generation nor the
        # starting point of the next stage.
        produces_policy = getattr(stage_cls, "produces_policy", True)
        png = _plot_rewards(log_cb.path, os.path.join(out_dir, "reward_curve.png"))
        if png:
            info["reward_curve"] = png
        summary["stages"].append(info)
        if evaluate and spec.evaluate and produces_policy:
            result = evaluate(trainer.model, ctx.tokenizer, ctx.dataset)
            summary["eval"].append({"after": spec.name, **result})
            _log(f"after '{spec.name}': held-out score {result['score']:.1%}")
        previous = model_dir if produces_policy else previous
        del trainer
        torch.cuda.empty_cache() if torch.cuda.is_available() else None

    summary["seconds"] = round(time.time() - start, 1)
    with open(os.path.join(recipe.output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    print_summary(summary, recipe)
    return summary


def print_summary(summary: dict, recipe) -> None:
    lines = ["", f"rewardkit: finished in {summary['seconds']:.0f}s"]
    if summary["eval"]:
        n = summary["eval"][0]["n"]
        lines.append(f"held-out score ({recipe.eval.get('split', 'test')}, {n} examples, greedy):")
        first = summary["eval"][0]["score"]
        prev = first
        for row in summary["eval"]:
            delta = "" if row is summary["eval"][0] else f"  ({(row['score'] - prev) * 100:+.1f} points)"
            lines.append(f"  {row['after']:<12} {row['score']:6.1%}{delta}")
            prev = row["score"]
    for st in summary["stages"]:
        extra = f", reward curve {st['reward_curve']}" if st.get("reward_curve") else ""
        lines.append(f"  stage {st['name']}: {st['steps']} steps in {st['seconds']:.0f}s{extra}")
    if summary["stages"]:
        lines.append(f"model written to {summary['stages'][-1]['model_dir']}")
    lines.append(f"summary: {os.path.join(summary['output_dir'], 'summary.json')}")
    print("\n".join(lines), flush=True)
