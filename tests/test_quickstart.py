"""The README's first command, as a user runs it, judged by what holds on any machine (not one CPU's figures).

Floating-point results differ between CPU models, so these tests assert the bars of the learning protocol with
margin (README, "The quick start": seeds 0-4 measured with benchmarks/learning.py), and that one machine
reproduces its own numbers.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "recipes", "quickstart.yaml")


def run_recipe(out, *overrides, recipe=QUICKSTART):
    proc = subprocess.run([sys.executable, "-m", "rewardkit.cli", "run", recipe, f"output_dir={out}", *overrides],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "summary.json").read_text()), proc.stdout


def scores(summary):
    return {row["after"]: row for row in summary["eval"]}


@pytest.mark.slow
def test_quickstart_learns_on_the_ci_seed(tmp_path, stage_cache):
    summary, stdout = run_recipe(tmp_path / "qs")
    ev = scores(summary)
    assert set(ev) == {"base", "sft", "grpo"} and ev["base"]["n"] == 300
    sft, grpo = ev["sft"], ev["grpo"]
    # SFT stopped on its validation criterion, not at the step budget.
    stop = summary["stages"][0]["early_stop"]
    assert stop["stopped_at"] and stop["history"][-1][1] >= 0.7, stop
    # What RL adds to the warm start, with the protocol's per-seed bars (README: median and worst of seeds 0-4
    # clear them with room). Nothing is asserted about base -> final: SFT alone takes the base from 0% past its
    # 70% criterion, so a bar there says nothing about GRPO.
    error_reduction = (grpo["score"] - sft["score"]) / (1 - sft["score"])
    assert error_reduction >= 0.25, (sft["score"], grpo["score"])
    assert grpo["sampled_score"] > sft["sampled_score"], (sft["sampled_score"], grpo["sampled_score"])
    assert "held-out score" in stdout and "stopped early at step" in stdout and "model written to" in stdout
    assert os.path.exists(summary["stages"][-1]["reward_curve"])


ANNEALED = ["stages.sft.early_stop.target=0.9", "stages.sft.early_stop.anneal_steps=300",
            "stages.sft.trainer.max_steps=3000", "eval.samples=16"]


@pytest.mark.slow
def test_rl_from_an_annealed_converged_sft_model_keeps_its_accuracy(tmp_path):
    # The path every user takes: SFT to convergence with a decaying schedule, then RL. SFT runs at a constant lr
    # until 90% of the validation split is right, then anneals to 0 over 300 steps (early_stop.anneal_steps), so
    # it is converged whatever step this CPU makes it generalize at (a fixed cosine over 1,500 steps gave 76% on
    # a CI machine). With TRL's default Adam epsilon GRPO at lr 1e-4 lost accuracy from such a model (README,
    # "RL from a converged model"); with the quick start's optimizer set-up it must lose at most 1 point, greedy
    # and sampled (16 samples per problem: the standard error of the difference is ~0.3 points; with 4 it was 0.6).
    summary, _ = run_recipe(tmp_path / "annealed", *ANNEALED)
    ev = scores(summary)
    assert summary["stages"][0]["early_stop"]["annealed_from"], summary["stages"][0]["early_stop"]
    assert ev["sft"]["score"] >= 0.9, ev["sft"]  # converged: little left for RL to add
    assert ev["grpo"]["score"] >= ev["sft"]["score"] - 0.01, (ev["sft"]["score"], ev["grpo"]["score"])
    assert ev["grpo"]["sampled_score"] >= ev["sft"]["sampled_score"] - 0.01


SMALL = ["data.params.n_train=2000", "stages.sft.trainer.max_steps=60", "~stages.sft.early_stop",
         "stages.grpo.trainer.max_steps=6", "stages.grpo.trainer.per_device_train_batch_size=16",
         "stages.sft.trainer.save_strategy='no'", "stages.grpo.trainer.save_strategy='no'", "eval.samples=2",
         "eval.n=60", "stages.grpo.trainer.logging_steps=1"]


@pytest.mark.slow
def test_the_same_machine_reproduces_its_own_numbers(tmp_path):
    first, _ = run_recipe(tmp_path / "a", *SMALL)
    second, _ = run_recipe(tmp_path / "b", *SMALL)
    strip = [{k: v for k, v in row.items() if k != "key"} for row in first["eval"]]
    assert strip == [{k: v for k, v in row.items() if k != "key"} for row in second["eval"]]

    def losses(out):
        with open(out / "grpo" / "log.jsonl") as f:
            return [(r["step"], r.get("loss"), r.get("reward")) for r in map(json.loads, f)]

    assert losses(tmp_path / "a") == losses(tmp_path / "b") and len(losses(tmp_path / "a")) >= 6
