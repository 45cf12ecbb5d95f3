"""Each trainer learns on the tiny model, through recipes, the way a user runs them."""

import json
import os

import pytest
import yaml

from rewardkit.pipeline import run
from rewardkit.recipe import load_recipe


def sevens(prompts, completions, **kwargs):
    """An easy reward to climb from a random model: the share of '7' characters in the completion."""
    return [c.count("7") / max(len(c), 1) for c in completions]


def recipe_file(tmp_path, body: dict) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "seed": 0, **body}, sort_keys=False))
    return str(path)


def log_rows(tmp_path, stage):
    with open(tmp_path / "out" / stage / "log.jsonl") as f:
        return [json.loads(line) for line in f]


def first_last(rows, key):
    values = [r[key] for r in rows if key in r]
    return values[0], values[-1]


DATA = {"name": "arithmetic", "params": {"n_train": 2000, "n_test": 20}}


def test_sft_loss_falls(tmp_path, builtin_registry):
    path = recipe_file(tmp_path, {"model": {"name": "tiny-llama"}, "data": DATA, "trainer": {
        "type": "sft", "max_steps": 40, "learning_rate": 3e-3, "per_device_train_batch_size": 32,
        "logging_steps": 5}})
    summary = run(load_recipe(path), builtin_registry)
    first, last = first_last(log_rows(tmp_path, "sft"), "loss")
    assert last < 0.6 * first, (first, last)
    assert os.path.exists(os.path.join(summary["stages"][0]["model_dir"], "model.safetensors"))


def test_grpo_raises_reward_and_chains_from_sft(tmp_path, builtin_registry):
    builtin_registry.add("rewards", "sevens", sevens, dist="tests")
    path = recipe_file(tmp_path, {"model": {"name": "tiny-llama"}, "data": DATA, "stages": {
        "sft": {"trainer": {"type": "sft", "max_steps": 5, "per_device_train_batch_size": 16}, "eval": False},
        "grpo": {"trainer": {"type": "grpo", "max_steps": 40, "learning_rate": 1e-2,
                             "per_device_train_batch_size": 16, "num_generations": 8, "max_completion_length": 6,
                             "logging_steps": 5},
                 "rewards": [{"name": "sevens", "alias": "sevens_a"}]}}})
    summary = run(load_recipe(path), builtin_registry)
    rows = log_rows(tmp_path, "grpo")
    first, last = first_last(rows, "rewards/sevens_a/mean")  # per-instance name reaches TRL's logs
    assert last > first + 0.2, (first, last)
    assert summary["stages"][1]["steps"] == 40
    assert os.path.exists(summary["stages"][1]["reward_curve"])


def test_dpo_prefers_chosen(tmp_path, builtin_registry):
    # A preference a tiny model can pick up in a few steps (right-vs-wrong sums need arithmetic first):
    # chosen answers are runs of one digit, rejected ones mixed digits. Read from a local jsonl file.
    import random

    rng = random.Random(0)
    for name, ids in (("pairs.jsonl", range(600)), ("heldout.jsonl", range(1000, 1064))):
        with open(tmp_path / name, "w") as f:
            for i in ids:
                d = str(rng.randrange(10))
                f.write(json.dumps({"prompt": f"{i}=", "chosen": d * 4,
                                    "rejected": "".join(rng.choice("0123456789") for _ in range(4))}) + "\n")
    path = recipe_file(tmp_path, {"model": {"name": "tiny-llama"},
                                  "data": {"path": "pairs.jsonl", "test_path": "heldout.jsonl"},
                                  "trainer": {"type": "dpo", "max_steps": 30, "learning_rate": 1e-3,
                                              "per_device_train_batch_size": 16, "logging_steps": 5}})
    summary = run(load_recipe(path), builtin_registry)
    rows = log_rows(tmp_path, "dpo")
    first, last = first_last(rows, "rewards/margins")
    assert last > first + 0.5, (first, last)
    assert first_last(rows, "rewards/accuracies")[1] > 0.9
    stage = summary["stages"][0]  # the same statistic on pairs DPO never trained on
    assert stage["heldout_pairs"] == 64 and stage["heldout_preference_accuracy"] > 0.8, stage
    assert stage["heldout_margin"] > 0


@pytest.mark.slow
def test_qlora_grpo_trains_adapters_on_cpu(tmp_path, builtin_registry):
    import torch
    from bitsandbytes.nn import Linear4bit
    from transformers import AutoModelForCausalLM

    builtin_registry.add("rewards", "sevens", sevens, dist="tests")
    path = recipe_file(tmp_path, {
        "model": {"name": "tiny-llama", "quantization": {"bits": 4, "quant_type": "nf4"},
                  "lora": {"r": 8, "lora_alpha": 16}},
        "data": DATA,
        "trainer": {"type": "grpo", "max_steps": 3, "learning_rate": 1e-2, "per_device_train_batch_size": 8,
                    "num_generations": 4, "max_completion_length": 4, "beta": 0.04, "logging_steps": 1},
        "rewards": [{"name": "sevens"}]})
    recipe = load_recipe(path)
    from rewardkit import pipeline

    captured = {}
    original = pipeline.models.save_merged

    def spy(trainer, *args, **kwargs):
        captured["model"] = trainer.model
        return original(trainer, *args, **kwargs)

    pipeline.models.save_merged = spy
    try:
        summary = run(recipe, builtin_registry)
    finally:
        pipeline.models.save_merged = original
    model = captured["model"]
    assert any(isinstance(m, Linear4bit) for m in model.modules()), "base is not 4-bit"
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.requires_grad for p in lora_b)
    assert any(p.abs().sum() > 0 for p in lora_b), "LoRA B starts at zero and must have moved"
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora" not in n)
    merged = AutoModelForCausalLM.from_pretrained(summary["stages"][0]["model_dir"])
    assert isinstance(merged.model.layers[0].self_attn.q_proj, torch.nn.Linear)  # exported unquantized
