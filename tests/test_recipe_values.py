"""Values, not just names: each value checked against the type of the field it lands in, and settings TRL or
transformers reject only once the model has loaded found by ``validate``."""

from __future__ import annotations

import textwrap
import types

import pytest

import rewardkit
from rewardkit import RecipeError
from rewardkit.recipe import load_recipe
from rewardkit.values import problem

BASE = """
    model: {name: tiny-llama}
    data: {name: arithmetic, params: {n_train: 100, n_test: 10}}
    trainer: {type: grpo, max_steps: 2, per_device_train_batch_size: 8, num_generations: 4}
    rewards:
      - {name: exact_match}
"""


def _recipe(tmp_path, text=BASE):
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def _problems(tmp_path, overrides, text=BASE) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(_recipe(tmp_path, text), overrides)
    return str(info.value)


@pytest.mark.parametrize("override, expected", [
    ("trainer.learning_rate='1e-4'", "trainer.learning_rate: expected a number, got str '1e-4'"),
    ("trainer.learning_rate=.nan", "trainer.learning_rate: expected a number, a finite one, got nan"),
    ("trainer.learning_rate=.inf", "trainer.learning_rate: expected a number, a finite one, got inf"),
    ("trainer.learning_rate=true", "trainer.learning_rate: expected a number, got bool True"),
    ("trainer.max_steps=2.5", "trainer.max_steps: expected an integer, got float 2.5"),
    ("trainer.max_steps=true", "trainer.max_steps: expected an integer, got bool True"),
    ("trainer.bf16=yes please", "trainer.bf16: expected true/false or null, got str 'yes please'"),
    ("trainer.run_name=[a]", "trainer.run_name: expected a string or null, got list"),
    ("trainer.beta=.nan", "trainer.beta: expected a number, a finite one, got nan"),
    ("trainer.kl_estimator=[[1]]", None),  # grpo has no kl_estimator: an unknown-field message, no crash
    ("rewards.0=1", None),
])
def test_trainer_values_are_checked_against_the_config_field_types(tmp_path, builtin_registry, override, expected):
    if expected is None:
        with pytest.raises(RecipeError):
            load_recipe(_recipe(tmp_path), [override])
        return
    message = _problems(tmp_path, [override])
    assert expected in message, message


def test_string_and_nan_learning_rates_in_the_file_itself(tmp_path, builtin_registry):
    for value, expected in (('"3e-4"', "got str '3e-4'"), (".nan", "a finite one, got nan")):
        text = BASE.replace("max_steps: 2,", f"max_steps: 2, learning_rate: {value},")
        message = _problems(tmp_path, [], text)
        assert f"trainer.learning_rate: expected a number, {expected}" in message, message


def test_good_values_still_validate(tmp_path, builtin_registry):
    recipe = load_recipe(_recipe(tmp_path), ["trainer.learning_rate=1", "trainer.report_to=[none]",
                                             "trainer.lr_scheduler_type=cosine", "trainer.max_grad_norm=0.5"])
    assert recipe.stages[0].trainer_args["learning_rate"] == 1


@pytest.mark.parametrize("override, expected", [
    ("trainer.eval_strategy=steps", "trainer.eval_strategy: 'steps' needs an eval_dataset"),
    ("trainer.eval_strategy=epoch", "trainer.eval_strategy: 'epoch' needs an eval_dataset"),
    ("trainer.per_device_train_batch_size=0", "trainer.per_device_train_batch_size: must be at least 1, got 0"),
    ("trainer.gradient_accumulation_steps=0", "trainer.gradient_accumulation_steps: must be at least 1"),
    ("trainer.num_generations=0", "trainer.num_generations: must be at least 1"),
    ("trainer.learning_rate=-1e-5", "trainer.learning_rate: must not be negative"),
    ("trainer.sync_ref_model=true", "sync_ref_model: true with beta: 0 has no reference model"),
    # TRL's own batch arithmetic, from GRPOConfig.__post_init__, with the user's numbers
    ("trainer.num_generations=3", "generation_batch_size (8) must be divisible by num_generations (3)"),
])
def test_settings_that_fail_only_at_run_time_are_found(tmp_path, builtin_registry, override, expected):
    message = _problems(tmp_path, [override])
    assert expected in message, message


def test_sync_ref_model_with_lora_is_refused(tmp_path, builtin_registry):
    message = _problems(tmp_path, ["trainer.sync_ref_model=true", "trainer.beta=0.1", "model.lora.r=8"])
    assert "trainer.sync_ref_model: TRL does not support it with LoRA" in message, message


@pytest.mark.parametrize("override, expected", [
    ("rewards=[{name: exact_match, weight: .nan}]", "rewards[0].weight: expected a number, a finite one, got nan"),
    ("data.test_size=.nan", "data.test_size: expected a number, a finite one, got nan"),
    ("model.lora.r='8'", "model.lora.r: expected an integer, got str '8'"),
    ("model.lora.lora_dropout=.inf", "model.lora.lora_dropout: expected a number, a finite one, got inf"),
    ("data.rename={a: [b]}", "data.rename: expected {old column: new column} names"),
    ("seed=1.5", "recipe.seed: expected an integer, got float 1.5"),
])
def test_recipe_section_values(tmp_path, builtin_registry, override, expected):
    message = _problems(tmp_path, [override])
    assert expected in message, message


class Threshold:
    """A reward factory whose params are annotated: validate checks values against the annotations."""

    def __init__(self, cutoff: float = 0.5, column: str = "answer", strict: bool = False):
        self.cutoff = cutoff

    def __call__(self, prompts, completions, **kwargs):
        return [1.0] * len(completions)


def test_reward_params_are_checked_against_the_factory_signature(tmp_path, builtin_registry):
    mod = types.ModuleType("threshold_plugin")
    mod.register_rewards = rewardkit.hookimpl(lambda register: register("threshold", Threshold))
    builtin_registry.add_plugin(mod, "threshold", dist="threshold")
    text = BASE.replace("{name: exact_match}", "{name: threshold, params: {cutoff: '0.5', strict: 1}}")
    message = _problems(tmp_path, [], text)
    assert "rewards[0].params.cutoff: expected a number, got str '0.5'" in message, message
    assert "rewards[0].params.strict: expected true/false, got int 1" in message, message
    ok = BASE.replace("{name: exact_match}", "{name: threshold, params: {cutoff: 1, strict: true}}")
    load_recipe(_recipe(tmp_path, ok))


@pytest.mark.parametrize("value, annotation, expected", [
    (1, float, None), (1.5, int, "expected an integer, got float 1.5"), (True, int, "got bool"),
    (float("nan"), float | None, "a finite one"), (float("inf"), float, "a finite one"),
    (["a", 1], list[str], "expected a list of strings"), (["a"], list[str], None),
    ("x", "str | None", None),  # an unresolved annotation: unknown, lets the value pass
    (None, int | None, None), (None, int, "expected an integer, got NoneType None"),
])
def test_problem(value, annotation, expected):
    got = problem(value, annotation)
    assert (got is None) if expected is None else (expected in got), got


def test_infinite_default_allows_infinity():
    assert problem(float("inf"), float, allow_inf=True) is None
    assert problem(float("nan"), float, allow_inf=True) is not None


class Checked(Threshold):
    """A factory with ``check_params``: validate reports what its constructor would reject at run time."""

    @classmethod
    def check_params(cls, **params):
        return [] if params.get("cutoff", 0.5) <= 1 else [f"cutoff: at most 1, got {params['cutoff']}"]


def test_factory_check_params_runs_at_validate_time(tmp_path, builtin_registry):
    mod = types.ModuleType("checked_plugin")
    mod.register_rewards = rewardkit.hookimpl(lambda register: register("checked", Checked))
    builtin_registry.add_plugin(mod, "checked", dist="checked")
    text = BASE.replace("{name: exact_match}", "{name: checked, params: {cutoff: 2}}")
    message = _problems(tmp_path, [], text)
    assert "rewards[0].params: cutoff: at most 1, got 2" in message, message
    load_recipe(_recipe(tmp_path, BASE.replace("{name: exact_match}", "{name: checked, params: {cutoff: 1}}")))


@pytest.mark.parametrize("trainer", ["grpo_is", "ppo"])
def test_rollout_arithmetic_is_checked_once_per_trainer(tmp_path, trainer):
    """grpo_is and ppo share the rollout-reuse fields; each rule about them is reported once (grpo_is's account of
    its batch arithmetic replaces the shared one rather than being filtered out of it by message text)."""
    message = _problems(tmp_path, [f"trainer.type={trainer}", "trainer.rollout_epochs=0", "trainer.early_stop_kl=0.1",
                                   "trainer.steps_per_generation=3", "trainer.gradient_accumulation_steps=2"])
    assert message.count("rollout_epochs must be >= 1") == 1, message
    assert message.count("multiple of 2") + message.count("must be a multiple of gradient_accumulation_steps") == 1, \
        message
