"""Keep the docs honest: the README's commands, the recipe keys, the hooks."""

import os
import re

from rewardkit import hookspecs, recipe, stopping

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(*parts):
    with open(os.path.join(REPO, *parts)) as f:
        return f.read()


def test_ci_runs_the_readme_test_command():
    readme_commands = re.findall(r"^(bash \.ci/setup && .*?)\s+#", read("README.md"), re.M)
    assert len(readme_commands) == 2 and read("README.md").lstrip().startswith("# rewardkit\n\n```bash")
    assert readme_commands[1] in read(".ci", "run").splitlines()


def test_every_recipe_key_is_documented():
    doc = read("docs", "recipes.md")
    for schema in (recipe.TOP_KEYS, recipe.MODEL_KEYS, recipe.QUANT_KEYS, recipe.DATA_KEYS, recipe.STAGE_KEYS,
                   recipe.REWARD_KEYS, recipe.EVAL_KEYS, recipe.FAULT_KEYS, recipe.MONITOR_KEYS,
                   stopping.EARLY_STOP_KEYS):
        for key in schema:
            assert f"`{key}`" in doc, f"docs/recipes.md does not document '{key}'"


def test_every_hook_is_documented_and_in_the_readme():
    hooks = [n for n in dir(hookspecs) if n.startswith("register_")]
    assert len(hooks) >= 5
    for name in hooks:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert "Called" in doc and "register(" in doc, f"{name} lacks its contract"
        assert name in read("README.md")


def test_reward_probe_attributes_are_documented_with_the_hooks():
    doc = hookspecs.register_rewards.__doc__
    for name in hookspecs.REWARD_PROBE_ATTRIBUTES:
        assert f"``{name}(" in doc, f"hookspecs.register_rewards does not document the reward attribute {name}"
    assert "rewardkit probe" in read("README.md") and "rewardkit probe" in read("docs", "safety.md")


def test_every_monitor_alarm_is_documented():
    from rewardkit import monitor  # noqa: PLC0415

    for doc in (read("docs", "safety.md"), read("docs", "recipes.md"), monitor.__doc__):
        for alarm in monitor.ALARMS:
            assert f"{alarm}" in doc, f"alarm {alarm} is not documented"
