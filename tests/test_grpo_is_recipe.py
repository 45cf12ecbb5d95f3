"""The CPU QLoRA grpo_is recipe learns on the CI seed: the grpo_is stage (LoRA on a 4-bit NF4 base, 4
reshuffled epochs per rollout) removes a good share of its SFT warm start's held-out errors. Slow."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_qlora_grpo_is_removes_a_quarter_of_the_warm_starts_errors(tmp_path, stage_cache):
    from rewardkit.pipeline import run
    from rewardkit.recipe import load_recipe
    from rewardkit.registry import get_registry

    recipe = load_recipe(os.path.join(ROOT, "recipes", "cpu", "arithmetic_grpo_is_qlora.yaml"),
                         [f"output_dir={tmp_path}"])
    summary = run(recipe, get_registry())
    ev = {row["after"]: row for row in summary["eval"]}
    sft, rl = ev["sft"], ev["grpo_is"]
    # docs/grpo_is.md: error reduction over seeds 0-4 median 50.0%, worst 31.4%; seed 0 81.8% (2 threads). The
    # bar is the per-seed one, below every measured seed.
    assert (rl["score"] - sft["score"]) / (1 - sft["score"]) >= 0.25, (sft, rl)
    assert rl["sampled_score"] > sft["sampled_score"], (sft, rl)
    stage = next(s for s in summary["stages"] if s["name"] == "grpo_is")
    assert stage["policy"]["linear_4bit"] > 0 and stage["policy"]["lora_modules"] > 0, stage["policy"]
