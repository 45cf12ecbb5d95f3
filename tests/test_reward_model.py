"""Reward models: the reward plugin's text format and normalization, lazy loading, ``{output_dir}`` in recipes,
and a tiny end-to-end pipeline reward model (LoRA) -> PPO scored by that reward model."""

import json
import math

import pytest
import yaml

import rewardkit.builtin
from rewardkit.recipe import _with_output_dir, load_recipe
from rewardkit.registry import Registry
from rewardkit.builtin.rewards import RewardModel, pair_texts


class Tok:
    eos_token = "</s>"

    def apply_chat_template(self, messages, tokenize=False):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages)


@pytest.fixture()
def registry():
    reg = Registry(entry_points=False)
    reg.add_plugin(rewardkit.builtin, "builtin", dist="rewardkit")
    return reg


def test_pair_texts_match_reward_trainer_format():
    # plain prompts: prompt + completion + eos (RewardTrainer appends eos to non-conversational pairs)
    assert pair_texts(Tok(), ["1+2="], ["3"]) == ["1+2=3</s>"]
    assert pair_texts(Tok(), ["1+2="], ["3</s>"]) == ["1+2=3</s>"]  # not twice
    # conversations: the chat template over prompt + assistant turn
    conv = [{"role": "user", "content": "1+2="}]
    assert pair_texts(Tok(), [conv], [[{"role": "assistant", "content": "3"}]]) == ["<user>1+2=<assistant>3"]


def test_normalization_by_hand():
    assert RewardModel("x", offset=1.0, scale=2.0)._normalize([3.0, 5.0]) == [1.0, 2.0]
    z = RewardModel("x", normalize="batch")._normalize([1.0, 2.0, 3.0])  # mean 2, std 1
    assert z == pytest.approx([-1.0, 0.0, 1.0], abs=1e-5)
    running = RewardModel("x", normalize="running")
    running._normalize([1.0, 3.0])  # mean 2, std sqrt(2)
    # after 1, 3, 5: mean 3, unbiased var (4 + 0 + 4) / 2 = 4 -> (5 - 3) / 2
    assert running._normalize([5.0]) == pytest.approx([1.0], abs=1e-5)


def test_bad_params_and_missing_model_are_clear():
    with pytest.raises(ValueError, match="normalize must be one of none, batch, running"):
        RewardModel("x", normalize="zscore")
    with pytest.raises(ValueError, match="scale must not be 0"):
        RewardModel("x", scale=0)
    rm = RewardModel("/nonexistent/rm")  # building is free: nothing is loaded yet
    with pytest.raises(FileNotFoundError, match="/nonexistent/rm"):
        rm(prompts=["1+1="], completions=["2"])


def test_output_dir_interpolation_leaves_other_braces():
    assert _with_output_dir({"p": "{output_dir}/rm/model", "re": r"\d{3}", "n": [1, "{output_dir}"]}, "o") == {
        "p": "o/rm/model", "re": r"\d{3}", "n": [1, "o"]}


RECIPE = {
    "output_dir": None,
    "seed": 0,
    "model": {"name": "tiny-llama"},
    "data": {"name": "arithmetic", "params": {"n_train": 64, "n_test": 8, "max_operand": 10}},
    "stages": {
        "rm": {"trainer": {"type": "reward_model", "max_steps": 6, "per_device_train_batch_size": 8,
                           "learning_rate": 1e-3, "logging_steps": 3, "gradient_checkpointing": False},
               "model": {"lora": {"r": 4, "lora_alpha": 8}},
               "data": {"name": "arithmetic_preferences",
                        "params": {"n_train": 48, "n_test": 16, "max_operand": 10}}},
        "ppo": {"trainer": {"type": "ppo", "max_steps": 2, "per_device_train_batch_size": 8,
                            "steps_per_generation": 1, "rollout_epochs": 2, "max_completion_length": 4,
                            "gradient_checkpointing": False, "logging_steps": 1},
                "rewards": [{"name": "reward_model", "params": {"path": "{output_dir}/rm/model", "batch_size": 4}},
                            {"name": "exact_match"}]},
    },
}


def test_recipe_validates_before_the_reward_model_exists(tmp_path, registry):
    raw = json.loads(json.dumps(RECIPE))
    raw["output_dir"] = str(tmp_path / "out")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    recipe = load_recipe(str(tmp_path / "r.yaml"), registry=registry)
    assert recipe.stages[1].rewards[0].params["path"] == f"{tmp_path}/out/rm/model"
    # the override of output_dir moves the reward model's path with it
    recipe = load_recipe(str(tmp_path / "r.yaml"), [f"output_dir={tmp_path}/elsewhere"], registry=registry)
    assert recipe.stages[1].rewards[0].params["path"] == f"{tmp_path}/elsewhere/rm/model"
    # stage data params may point at an earlier stage's output too (on-policy preference pairs)
    raw["data"] = {"name": "reverse", "params": {"n_train": 64, "n_test": 8}}
    raw["stages"]["rm"]["data"] = {"name": "reverse_policy_preferences", "params": {"policy": "{output_dir}/sft/model"}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    recipe = load_recipe(str(tmp_path / "r.yaml"), registry=registry)
    assert recipe.stages[0].data["params"]["policy"] == f"{tmp_path}/out/sft/model"


def test_pipeline_reward_model_then_ppo(tmp_path, registry):
    from rewardkit.pipeline import run

    raw = json.loads(json.dumps(RECIPE))
    raw["output_dir"] = str(tmp_path / "out")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    summary = run(load_recipe(str(tmp_path / "r.yaml"), registry=registry), registry)
    rm, ppo = summary["stages"]
    assert 0.0 <= rm["heldout_accuracy"] <= 1.0 and rm["heldout_pairs"] == 16
    # LoRA adapter + new score head merged into a 1-output sequence classifier
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(rm["model_dir"]).num_labels == 1
    # PPO started from the base policy, not from the reward model, and was scored by it
    log = [json.loads(line) for line in (tmp_path / "out" / "ppo" / "log.jsonl").read_text().splitlines()]
    assert any("rewards/reward_model/mean" in r for r in log)
    assert ppo["steps"] == 2
    scores = RewardModel(rm["model_dir"])(prompts=["1+2=", "1+2="], completions=["3", "4"])
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)


def test_reverse_datasets_are_disjoint_and_pairs_differ():
    from rewardkit.builtin.datasets import reverse, reverse_preferences

    d = reverse(n_train=500, n_test=50, seed=3)
    p = reverse_preferences(n_train=500, n_test=50, seed=3)
    assert not set(d["train"]["prompt"]) & set(d["test"]["prompt"])
    assert set(p["test"]["prompt"]) == set(d["test"]["prompt"])
    row = d["train"][0]
    assert row["completion"] == row["prompt"][:-1][::-1] == row["answer"]
    assert all(c != r and len(c) == len(r) for c, r in zip(p["train"]["chosen"], p["train"]["rejected"]))
    with pytest.raises(ValueError, match="leaves no training strings"):
        reverse(n_test=16, length=2, alphabet="abcd")
