import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from rewardkit import RecipeError
from rewardkit.recipe import apply_overrides, load_recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ALL_RECIPES = sorted(glob.glob(os.path.join(REPO, "recipes", "**", "*.yaml"), recursive=True))


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


GOOD = """
    model: {name: tiny-llama}
    data: {name: arithmetic, params: {n_train: 100, n_test: 10}}
    trainer: {type: grpo, max_steps: 2, per_device_train_batch_size: 8, num_generations: 4}
    rewards:
      - {name: exact_match, weight: 1.0}
    eval: {reward: exact_match}
"""


def test_every_recipe_in_the_repo_validates():
    assert len(ALL_RECIPES) >= 4, ALL_RECIPES
    for path in ALL_RECIPES:
        first = open(path).readline()
        assert first.startswith("# Run: rewardkit run "), f"{path} must open with its run command"
        load_recipe(path)  # raises RecipeError listing every problem


def test_overrides_set_nested_keys_and_delete():
    raw = {"trainer": {"type": "grpo", "beta": 0.1}, "rewards": [1]}
    out = apply_overrides(raw, ["trainer.learning_rate=1e-5", "~trainer.beta", "model.lora.r=8", "seed=3"])
    assert out["trainer"] == {"type": "grpo", "learning_rate": 1e-5} and out["model"] == {"lora": {"r": 8}}
    assert out["seed"] == 3 and raw["trainer"]["beta"] == 0.1  # the original is untouched
    with pytest.raises(RecipeError, match="not in the recipe"):
        apply_overrides(raw, ["~trainer.nope"])
    with pytest.raises(RecipeError, match="expected key.path=value"):
        apply_overrides(raw, ["trainer.beta"])


def test_single_stage_shorthand_and_overrides(tmp_path, builtin_registry):
    recipe = load_recipe(write(tmp_path, GOOD), ["trainer.learning_rate=1e-5"])
    [stage] = recipe.stages
    assert stage.name == "grpo" and stage.trainer_args["learning_rate"] == 1e-5
    assert stage.rewards[0].alias == "exact_match"


def test_all_problems_are_reported_at_once(tmp_path, builtin_registry):
    path = write(tmp_path, """
        model: {nme: tiny-llama}
        data: {name: arithmetc}
        stages:
          sft:
            trainer: {type: sft, learnin_rate: 1.0}
          rl:
            trainer: {type: grpoo}
            rewards:
              - {name: exact_mach}
              - {name: exact_match, params: {colum: answer}}
              - {name: exact_match, wieght: 2}
        evaluation: {}
    """)
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    text = str(exc.value)
    for expected in ["recipe.evaluation: unknown key (did you mean 'eval'?)",
                     "model.nme: unknown key (did you mean 'name'?)",
                     "data.name: unknown dataset 'arithmetc' (did you mean 'arithmetic'",
                     "stages.sft.trainer.learnin_rate: not a field of SFTConfig (did you mean 'learning_rate'?)",
                     "stages.rl.trainer.type: unknown trainer 'grpoo' (did you mean 'grpo'",
                     "stages.rl.rewards[0].name: unknown reward 'exact_mach' (did you mean 'exact_match'?)",
                     "did you mean 'column' for 'colum'",
                     "stages.rl.rewards[2].wieght: unknown key (did you mean 'weight'?)",
                     "name 'exact_match' already used by stages.rl.rewards[1]"]:
        assert expected in text, f"missing: {expected}\n{text}"
    assert exc.value.problems and len(exc.value.problems) >= 9


def test_reward_columns_are_checked_against_the_dataset(tmp_path, builtin_registry):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"{i}+1=", "gold": str(i + 1)}) for i in range(5)))
    path = write(tmp_path, f"""
        model: {{name: tiny-llama}}
        data: {{path: d.jsonl, prompt_template: "{{question}}", test_size: 2}}
        trainer: {{type: grpo, per_device_train_batch_size: 8, num_generations: 4}}
        rewards: [{{name: exact_match}}]
    """)
    with pytest.raises(RecipeError, match="needs column.s. answer; dataset columns are question, gold, prompt"):
        load_recipe(path)
    ok = write(tmp_path, open(path).read().replace("[{name: exact_match}]",
                                                    "[{name: exact_match, params: {column: gold}}]"), "ok.yaml")
    load_recipe(ok)


def test_trainer_config_checks_surface_with_the_users_numbers(tmp_path, builtin_registry):
    path = write(tmp_path, GOOD)
    with pytest.raises(RecipeError, match="GRPOConfig rejects these values: .*7"):
        load_recipe(path, ["trainer.num_generations=7"])
    with pytest.raises(RecipeError, match="output_dir: set by rewardkit"):
        load_recipe(path, ["trainer.output_dir=/tmp/x"])


def test_missing_data_file_and_bad_yaml(tmp_path, builtin_registry):
    with pytest.raises(RecipeError, match=r"data.path: file not found: .*nope.jsonl"):
        load_recipe(write(tmp_path, GOOD.replace("name: arithmetic, params: {n_train: 100, n_test: 10}",
                                                 "path: nope.jsonl")))
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "model: [unclosed", "bad.yaml"))


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "rewardkit.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_cli_user_errors_exit_2_without_traceback(tmp_path):
    path = write(tmp_path, GOOD.replace("exact_match, weight", "exact_matchh, weight"))
    for command in ("validate", "run"):
        out = run_cli(command, path)
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr and "unknown reward 'exact_matchh'" in out.stderr
    out = run_cli("validate", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "recipe file not found" in out.stderr


def test_plugins_json_lists_builtin():
    out = run_cli("plugins", "--json")
    data = json.loads(out.stdout)
    [builtin] = [p for p in data["plugins"] if p["name"] == "builtin"]
    assert builtin["distribution"] == "rewardkit" and "grpo" in builtin["registered"]["trainers"]


@pytest.mark.slow
def test_third_party_entry_point_package_installed_with_pip(tmp_path):
    """A package that only declares a `rewardkit.rewards` entry point is listed and usable by name."""
    pkg = tmp_path / "src"
    (pkg / "shout_reward").mkdir(parents=True)
    (pkg / "shout_reward" / "__init__.py").write_text(textwrap.dedent("""
        def shout(prompts, completions, **kwargs):
            return [float(c.isupper()) for c in completions]
    """))
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "shout-reward"
        version = "1.2.3"
        [project.entry-points."rewardkit.rewards"]
        shout = "shout_reward:shout"
    """))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(pkg)], check=True, timeout=300)
    env = {"PYTHONPATH": str(site)}
    listing = json.loads(run_cli("plugins", "--json", env=env).stdout)
    [entry] = [p for p in listing["plugins"] if p["distribution"] == "shout-reward"]
    assert entry["version"] == "1.2.3" and entry["registered"] == {"rewards": ["shout"]}
    recipe = write(tmp_path, GOOD.replace("{name: exact_match, weight: 1.0}", "{name: shout, weight: 0.5}"))
    out = run_cli("validate", recipe, env=env)
    assert out.returncode == 0, out.stderr
    out = run_cli("validate", recipe, env={**env, "REWARDKIT_DISABLE_PLUGINS": "shout-reward"})
    assert out.returncode == 2 and "disabled by REWARDKIT_DISABLE_PLUGINS: shout" in out.stderr


@pytest.mark.parametrize("trainer", ["ppo", "grpo_is"])
def test_kl_estimator_names_are_checked_before_any_model_loads(tmp_path, builtin_registry, trainer):
    path = write(tmp_path, GOOD.replace("type: grpo,", f"type: {trainer}, kl_estimator: k4,"))
    with pytest.raises(RecipeError, match=r"trainer.kl_estimator: unknown kl_estimator 'k4'; installed: .*k3"):
        load_recipe(path)
