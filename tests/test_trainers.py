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


# --------------------------------------------------------------------------- rloo and kto: TRL's trainers as stages
def _stage_context(tmp_path, registry, tiny, trainer: dict, data: dict, rewards=()):
    """(stage class, StageContext) of a one-stage recipe, as the pipeline builds them (rewardkit.StageContext)."""
    from rewardkit import StageContext

    body = {"model": {"name": "tiny-llama"}, "data": data, "trainer": trainer}
    if rewards:
        body["rewards"] = [{"name": r} for r in rewards]
    recipe = load_recipe(recipe_file(tmp_path, body), registry=registry)
    spec = recipe.stages[0]
    built = [registry.build_reward(b.name, b.params, b.alias, spec.reward_faults) for b in spec.rewards]
    path, tok, _ = tiny
    dataset = registry.load("datasets", data["name"])(**data["params"])
    return (registry.load("trainers", spec.trainer_type),
            StageContext(recipe, spec, registry, path, tok, dataset, str(tmp_path / "out" / spec.name), built, []))


def test_rloo_stage_builds_trls_rloo_trainer_with_the_recipes_rewards(tmp_path, registry, tiny):
    from trl import RLOOTrainer

    cls, ctx = _stage_context(tmp_path, registry, tiny, {"type": "rloo", "num_generations": 4, "beta": 0.1,
                                                          "per_device_train_batch_size": 4},
                              {"name": "arithmetic", "params": {"n_train": 16, "n_test": 4}}, ["exact_match"])
    trainer = cls().build_trainer(ctx)
    assert type(trainer) is RLOOTrainer and cls.rollout_metrics and not cls.rollout_groups
    assert trainer.args.num_generations == 4 and trainer.args.beta == 0.1 and trainer.args.seed == 0
    assert trainer.reward_func_names == ["exact_match"] and trainer.reward_weights.tolist() == [1.0]


def test_kto_stage_builds_trls_kto_trainer_from_preference_pairs(tmp_path, registry, tiny):
    from trl import KTOTrainer

    cls, ctx = _stage_context(tmp_path, registry, tiny, {"type": "kto", "per_device_train_batch_size": 4},
                              {"name": "arithmetic_preferences", "params": {"n_train": 16, "n_test": 4}})
    trainer = cls().build_trainer(ctx)
    assert type(trainer) is KTOTrainer and not cls.takes_rewards and cls.produces_policy
    labels = trainer.train_dataset["label"]  # TRL unpaired each pair: chosen desirable, rejected not
    assert len(labels) == 32 and sum(labels) == 16


@pytest.mark.parametrize("trainer, expected", [
    ({"type": "rloo", "sync_ref_model": True, "beta": 0.0}, "trainer.sync_ref_model: true with beta: 0 has no "
                                                           "reference model to sync (RLOOTrainer refuses it)"),
    ({"type": "rloo", "use_vllm": True}, "trainer.use_vllm: not supported with trainer rloo"),
    ({"type": "kto", "per_device_train_batch_size": 1}, "trainer.per_device_train_batch_size: KTO's loss_type 'kto' "
                                                         "estimates its KL term"),
    ({"type": "kto", "train_sampling_strategy": "random"}, "trainer.train_sampling_strategy: KTO's loss_type 'kto' "
                                                           "pairs each example with its batch neighbours"),
    ({"type": "kto", "sync_ref_model": True, "precompute_ref_log_probs": True},
     "trainer.sync_ref_model: cannot be combined with precompute_ref_log_probs (KTOTrainer refuses it)"),
    ({"type": "kto", "num_generations": 2}, "trainer.num_generations: not a field of KTOConfig"),
])
def test_rloo_and_kto_refusals_are_found_by_validation(tmp_path, registry, trainer, expected):
    from rewardkit.errors import RecipeError

    data = {"name": "arithmetic" if trainer["type"] == "rloo" else "arithmetic_preferences", "params": {"n_test": 4}}
    body = {"model": {"name": "tiny-llama"}, "data": data, "trainer": trainer}
    if trainer["type"] == "rloo":
        body["rewards"] = [{"name": "exact_match"}]
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe_file(tmp_path, body), registry=registry)
    assert expected in str(err.value), str(err.value)


def test_kto_loss_without_the_kl_term_takes_a_batch_of_one(registry):
    kto = registry.load("trainers", "kto")
    assert kto.check_args({"loss_type": "apo_zero_unpaired", "per_device_train_batch_size": 1}, registry) == []


def _changed(model_dir: str, registry) -> bool:
    """Whether the trained model's weights differ from the tiny-llama it started from."""
    import torch
    from transformers import AutoModelForCausalLM

    from rewardkit import models

    before = AutoModelForCausalLM.from_pretrained(models.resolve("tiny-llama", registry)).state_dict()
    after = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_rloo_trains_a_few_steps_from_a_recipe_with_the_monitor(tmp_path, builtin_registry):
    builtin_registry.add("rewards", "sevens", sevens, dist="tests")  # varies within a group from the start
    path = recipe_file(tmp_path, {"model": {"name": "tiny-llama"}, "data": DATA, "trainer": {
        "type": "rloo", "max_steps": 3, "learning_rate": 1e-3, "per_device_train_batch_size": 8,
        "num_generations": 4, "max_completion_length": 4, "logging_steps": 1}, "rewards": [{"name": "sevens"}]})
    summary = run(load_recipe(path, registry=builtin_registry), builtin_registry)
    assert summary["stages"][0]["steps"] == 3 and "rloo" in summary["health"]
    assert len([r for r in log_rows(tmp_path, "rloo") if "reward" in r]) == 3
    assert _changed(summary["stages"][0]["model_dir"], builtin_registry)


@pytest.mark.slow
def test_kto_trains_a_few_steps_from_a_recipe(tmp_path, builtin_registry):
    path = recipe_file(tmp_path, {"model": {"name": "tiny-llama"},
                                  "data": {"name": "arithmetic_preferences", "params": {"n_train": 64, "n_test": 8}},
                                  "trainer": {"type": "kto", "max_steps": 3, "learning_rate": 1e-3,
                                              "per_device_train_batch_size": 4, "logging_steps": 1}})
    summary = run(load_recipe(path, registry=builtin_registry), builtin_registry)
    assert summary["stages"][0]["steps"] == 3 and "health" not in summary
    assert len([r for r in log_rows(tmp_path, "kto") if "loss" in r]) == 3
    assert _changed(summary["stages"][0]["model_dir"], builtin_registry)
