"""`rewardkit run RECIPE --smoke`: a GPU recipe's code path at CPU sizes (rewardkit.smoke)."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from rewardkit import smoke
from rewardkit.errors import RecipeError
from rewardkit.recipe import load_recipe
from rewardkit.registry import get_registry
from rewardkit.smoke import gsm8k_sample, standin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_RECIPES = sorted(glob.glob(os.path.join(REPO, "recipes", "gpu", "*.yaml")))
GSM8K = os.path.join(REPO, "recipes", "gpu", "gsm8k_grpo_qwen2.5-0.5b.yaml")
ARITH = os.path.join(REPO, "recipes", "gpu", "arithmetic_grpo_qwen2.5-0.5b_qlora.yaml")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rewardkit.cli", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_smoke_changes_sizes_and_sources_only():
    recipe = load_recipe(GSM8K)
    small, notes = smoke.scaled(recipe, get_registry())
    assert small.output_dir == recipe.output_dir + "-smoke" and recipe.output_dir != small.output_dir
    hub_keys = ("hub", "config", "split", "test_split")
    assert small.data == {**{k: v for k, v in recipe.data.items() if k not in hub_keys},
                          "path": smoke.STAND_IN_DATA["openai/gsm8k"], "test_size": 16, "limit": 32}
    assert small.model == recipe.model  # quantization and LoRA as the recipe says (the name comes later)
    (t0,), (t1,) = recipe.stages, small.stages
    assert t1.rewards == t0.rewards and t1.data == small.data and t0.data == recipe.data  # the original untouched
    changed = {k for k in t1.trainer_args if t1.trainer_args[k] != t0.trainer_args.get(k)}
    assert changed <= {"max_steps", "logging_steps", "save_steps", "max_completion_length", "use_cpu"}
    assert (t1.trainer_args["max_steps"], t1.trainer_args["save_steps"], t1.trainer_args["max_completion_length"]) \
        == (2, 2, 128)
    assert small.eval.n == 8 and small.eval.max_new_tokens == 128 and small.eval.reward == recipe.eval.reward
    assert (t1.monitor, t1.rollout_log, t1.reward_faults) == (t0.monitor, t0.rollout_log, t0.reward_faults)
    assert any("openai/gsm8k" in n for n in notes)


def test_smoke_keeps_the_k_its_samples_allow_and_moves_output_paths(tmp_path):
    from rewardkit.recipe import normalize

    raw = {"output_dir": str(tmp_path / "run"), "model": {"name": "tiny-llama"}, "data": {"name": "arithmetic"},
           "eval": {"reward": "exact_match", "samples": 8, "pass_k": [1, 2, 8], "maj_k": [8]},
           "stages": {"rm": {"trainer": {"type": "reward_model"}},
                      "ppo": {"trainer": {"type": "ppo"}, "early_stop": {"every": 50, "target": 0.9},
                              "rewards": [{"name": "reward_model", "params": {"path": "{output_dir}/rm/model"}}]}}}
    problems = []
    recipe = normalize(raw, None, problems)
    assert problems == []
    small, _ = smoke.scaled(recipe, get_registry())
    assert (small.eval.samples, small.eval.pass_k, small.eval.maj_k) == (2, (1, 2), ())
    assert small.stages[1].rewards[0].params["path"] == str(tmp_path / "run-smoke" / "rm" / "model")
    assert recipe.stages[1].rewards[0].params["path"] == str(tmp_path / "run" / "rm" / "model")
    assert (small.stages[1].early_stop.every, small.stages[1].early_stop.n) == (1, 8)


VLLM_RECIPE = os.path.join(REPO, "recipes", "cpu", "arithmetic_grpo_vllm.yaml")


@pytest.mark.parametrize("installed", [True, False])
def test_smoke_keeps_use_vllm_only_where_vllm_is_installed(monkeypatch, installed):
    from rewardkit import vllm_sync

    monkeypatch.setattr(vllm_sync, "available", lambda: installed)
    recipe = load_recipe(VLLM_RECIPE, ["trainer.vllm_mode=server"])
    assert recipe.stages[0].trainer_args["use_vllm"] is True
    small, notes = smoke.scaled(recipe, get_registry())
    args = small.stages[0].trainer_args
    assert args["use_vllm"] is installed and recipe.stages[0].trainer_args["vllm_mode"] == "server"
    if installed:
        assert args["vllm_mode"] == "colocate" and any("vllm_mode: colocate (was server" in n for n in notes), notes
    else:
        assert any("use_vllm: off (vLLM is not installed" in n for n in notes), notes
    assert not any("needs a GPU" in n for n in notes if "use_vllm" in n)


def test_stand_in_families_come_from_the_hub_id():
    assert standin.family_of("Qwen/Qwen2.5-0.5B-Instruct").model_type == "qwen2"
    assert standin.family_of("Qwen/Qwen3-0.6B").model_type == "qwen3"
    assert standin.family_of("meta-llama/Llama-3.2-1B-Instruct").model_type == "llama"
    with pytest.raises(RecipeError, match="model.name: --smoke cannot tell the architecture of hub model 'x/y'"):
        standin.family_of("x/y")


def test_stand_in_tokenizer_speaks_the_family_chat_format():
    tok = standin.build_tokenizer(standin.family_of("Qwen/Qwen2.5-0.5B-Instruct"), ["What is 12 * 3?", "#### 36"] * 4)
    text = tok.apply_chat_template([{"role": "user", "content": "What is 12 * 3?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                    "<|im_end|>\n<|im_start|>user\nWhat is 12 * 3?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_gsm8k_sample_is_the_generator_output_in_gsm8k_layout():
    with open(gsm8k_sample.PATH, encoding="utf-8") as f:
        assert f.read() == gsm8k_sample.render()
    rows = gsm8k_sample.rows()
    assert len(rows) == gsm8k_sample.N_ROWS and all(set(r) == {"question", "answer"} for r in rows)
    for r in rows:  # reasoning with calculator annotations, then "#### N" equal to the last computed value
        steps, final = r["answer"].rsplit("\n#### ", 1)
        calcs = re.findall(r"<<([^=>]+)=(-?\d+)>>", steps)
        assert len(calcs) == 2 and all(eval(e) == int(v) for e, v in calcs)  # noqa: S307 - our own arithmetic
        assert final == calcs[-1][1]


def test_cli_smoke_errors_exit_2_naming_the_field(tmp_path):
    out = run_cli("run", ARITH, "--smoke", "model.name=acme/unknown-7b", f"output_dir={tmp_path / 'a'}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "model.name: --smoke cannot tell the architecture of hub model 'acme/unknown-7b'" in out.stderr
    out = run_cli("run", GSM8K, "--smoke", "data.hub=acme/private-math", f"output_dir={tmp_path / 'b'}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "data.hub: --smoke has no local stand-in for hub dataset 'acme/private-math'" in out.stderr
    assert not (tmp_path / "a-smoke").exists() and not (tmp_path / "b-smoke").exists()


class _Scored:
    def __init__(self, name, scores):
        self.__name__, self.kept = name, [(f"c{i}", s) for i, s in enumerate(scores)]


def test_report_fails_a_constant_reward_only_when_the_policy_is_a_warmed_stand_in(tmp_path):
    summary = {"output_dir": str(tmp_path), "stages": [{"name": "grpo", "trainer": "grpo", "steps": 2}]}
    rec = smoke.Recorder()
    rec.rewards["grpo"] = [_Scored("correct", [0.0] * 8), _Scored("format", [0.0] * 8)]
    rep, problems = smoke.report(summary, rec, {"Qwen/Qwen2.5-0.5B-Instruct": "/x"}, [])
    assert len(problems) == 1 and "stage grpo: every reward gave one constant score" in problems[0]
    rep, problems = smoke.report(summary, rec, {}, [])
    assert problems == [] and any(n.startswith("warning: stage grpo") for n in rep["notes"])
    rec.rewards["grpo"][1] = _Scored("format", [0.0, 1.0] * 4)
    rep, problems = smoke.report(summary, rec, {"Qwen/Qwen2.5-0.5B-Instruct": "/x"}, [])
    assert problems == [] and rep["stages"]["grpo"]["rewards"]["format"]["distinct"] == 2


def test_checked_reward_keeps_texts_and_scores_up_to_the_limit(builtin_registry):
    fn = builtin_registry.build_reward("exact_match", {})
    fn(prompts=["1+1="] * 3, completions=["2", "3", "2"], answer=["2"] * 3)
    assert fn.kept is None  # nothing is kept unless asked
    fn.keep(4)
    fn(prompts=["1+1="] * 3, completions=[[{"role": "assistant", "content": "2"}], "3", "2"], answer=["2"] * 3)
    fn(prompts=["1+1="] * 3, completions=["2", "3", "2"], answer=["2"] * 3)
    assert fn.kept == [("2", 1.0), ("3", 0.0), ("2", 1.0), ("2", 1.0)]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", GPU_RECIPES, ids=os.path.basename)
def test_every_gpu_recipe_smoke_runs_on_cpu_with_rewards_that_vary(recipe, tmp_path):
    out = run_cli("run", recipe, "--smoke", f"output_dir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "smoke run: OK" in out.stdout
    rep = json.loads((tmp_path / "run-smoke" / "smoke.json").read_text())
    original = load_recipe(recipe)
    assert [s.name for s in original.stages] == list(rep["stages"])
    for spec in original.stages:
        st = rep["stages"][spec.name]
        assert st["steps"] == 2 and st["trainer"] == spec.trainer_type
        policy = st["policy"]
        assert policy["architecture"] == "Qwen2ForCausalLM"  # every GPU recipe here is a Qwen2.5
        if spec.model.get("quantization"):
            assert policy["linear_4bit"] == 14  # 2 layers x (q, k, v, o, gate, up, down)
        if spec.model.get("lora"):
            assert policy["lora_modules"] == 14 and 0 < policy["trainable"] < policy["parameters"]
        assert sorted(st["rewards"]) == sorted(b.alias for b in spec.rewards)
        assert all(r["scored"] >= 32 and r["unscored"] == 0 for r in st["rewards"].values())
        assert max(r["distinct"] for r in st["rewards"].values()) >= 2  # real completions, scored differently
        assert any(row.get("reward_std", 0) > 0 for row in st["logged"])  # and TRL logged the spread
        assert os.path.isdir(tmp_path / "run-smoke" / spec.name / "checkpoint-2")
    summary = json.loads((tmp_path / "run-smoke" / "summary.json").read_text())
    assert summary["complete"] and all(r["n"] == 8 for r in summary["eval"])


@pytest.mark.slow
def test_smoke_fails_when_the_reward_cannot_read_the_answer_format(tmp_path):
    """GSM8K answers end in "#### N"; math.accuracy told to read \\boxed{} only scores every answer-shaped
    completion 0: exit 1, with the reward named."""
    out = run_cli("run", GSM8K, "--smoke", f"output_dir={tmp_path / 'run'}",
                  "stages.grpo.rewards=[{name: math.accuracy, params: {gold_column: answer, extract: [boxed]}}]")
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "PROBLEM: stage grpo: every reward gave one constant score (math.accuracy: 64 completions, all 0.0)" in \
        out.stdout and "smoke run: FAILED" in out.stdout
