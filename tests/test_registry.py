import subprocess
import sys
import types

import pytest

import rewardkit
from rewardkit import PluginError, RewardError
from rewardkit.registry import Registry, is_reward_function, required_columns


def plugin(name, **hooks):
    """A hook module built on the fly: plugin('p', register_rewards=fn)."""
    mod = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(mod, hook, rewardkit.hookimpl(fn))
    return mod


def ones(prompts, completions, **kwargs):
    return [1.0] * len(completions)


class Scaled:
    def __init__(self, scale: float = 1.0, column: str = "answer"):
        self.scale, self.column = scale, column

    def __call__(self, prompts, completions, **kwargs):
        return [self.scale * (c == g) for c, g in zip(completions, kwargs[self.column])]


def test_function_and_factory_are_told_apart():
    assert is_reward_function(ones)
    assert not is_reward_function(Scaled)
    assert is_reward_function(Scaled())
    assert required_columns(lambda prompts, completions, answer, hint=None, **kw: []) == ["answer"]


def test_register_and_build(fresh_registry):
    fresh_registry.add_plugin(plugin("p", register_rewards=lambda register: (
        register("ones", ones), register("scaled", Scaled, columns=lambda p: [p.get("column", "answer")]))),
        dist="dist-p")
    assert fresh_registry.names("rewards") == ["ones", "scaled"]
    fn = fresh_registry.build_reward("scaled", {"scale": 2.0}, alias="double")
    assert fn.__name__ == "double"  # TRL logs rewards/<__name__>/mean
    assert fn(prompts=["q", "q"], completions=["a", "b"], answer=["a", "a"]) == [2.0, 0.0]
    assert fresh_registry.reward_columns("scaled", {"column": "gold"}) == ["gold"]
    [problem] = fresh_registry.reward_problems("scaled", {"scal": 2})
    assert "'scal'" in problem and "did you mean 'scale'" in problem and "dist-p" in problem
    [problem] = fresh_registry.reward_problems("ones", {"x": 1})
    assert "takes no params" in problem


def test_duplicate_name_is_an_error_naming_both(fresh_registry):
    fresh_registry.add_plugin(plugin("a", register_rewards=lambda register: register("acc", ones)), dist="dist-a")
    fresh_registry.add_plugin(plugin("b", register_rewards=lambda register: register("acc", ones)), dist="dist-b")
    with pytest.raises(PluginError) as exc:
        fresh_registry.get("rewards", "acc")
    assert "dist-a" in str(exc.value) and "dist-b" in str(exc.value)
    assert len(fresh_registry.conflicts()) == 1


def test_misspelt_hook_fails_loudly(fresh_registry):
    info = fresh_registry.add_plugin(plugin("typo", register_reward=lambda register: None))
    fresh_registry.names("rewards")
    assert info.error and "register_reward" in info.error


def test_hook_that_raises_is_reported(fresh_registry):
    def boom(register):
        raise RuntimeError("cannot start")

    info = fresh_registry.add_plugin(plugin("boom", register_rewards=boom), dist="dist-boom")
    with pytest.raises(PluginError) as exc:
        fresh_registry.get("rewards", "whatever")
    assert info.error and "cannot start" in info.error
    assert "dist-boom" in str(exc.value) and "cannot start" in str(exc.value)


def test_unknown_name_suggests_and_lists(fresh_registry):
    fresh_registry.add_plugin(plugin("p", register_rewards=lambda register: register("math.accuracy", ones)))
    with pytest.raises(PluginError, match=r"did you mean 'math.accuracy'.*installed: math.accuracy"):
        fresh_registry.get("rewards", "math.acuracy")


def test_import_string_is_lazy_and_errors_name_the_plugin(fresh_registry):
    fresh_registry.add_plugin(plugin("lazy", register_rewards=lambda register: register(
        "missing", "no_such_module_xyz:fn")), dist="dist-lazy")
    assert fresh_registry.names("rewards") == ["missing"]  # listing does not import
    with pytest.raises(PluginError, match="dist-lazy.*no_such_module_xyz"):
        fresh_registry.build_reward("missing")


@pytest.mark.parametrize("output, message", [
    ([1.0], "returned 1 values for 2 completions"),
    ([1.0, float("nan")], "returned nan for sample 1"),
    ([1.0, "yes"], "returned str"),
    (None, "returned NoneType"),
])
def test_reward_output_is_checked(fresh_registry, output, message):
    fresh_registry.add("rewards", "bad", lambda prompts, completions, **kw: output, dist="dist-bad")
    fn = fresh_registry.build_reward("bad")
    with pytest.raises(RewardError, match=message) as exc:
        fn(prompts=["a", "b"], completions=["x", "y"])
    assert "dist-bad" in str(exc.value)


def test_none_means_unjudged_and_passes_through(fresh_registry):
    fresh_registry.add("rewards", "maybe", lambda prompts, completions, **kw: [None, 0.0])
    assert fresh_registry.build_reward("maybe")(prompts=["a", "b"], completions=["x", "y"]) == [None, 0.0]


def test_builtin_plugin_registers_every_kind(builtin_registry):
    assert "exact_match" in builtin_registry.names("rewards")
    assert {"k1", "k2", "k3", "low_var_kl", "abs"} <= set(builtin_registry.names("kl_estimators"))
    assert {"sft", "grpo", "dpo"} <= set(builtin_registry.names("trainers"))
    assert "arithmetic" in builtin_registry.names("datasets") and "tiny-llama" in builtin_registry.names("models")


def test_disable_env_var_skips_plugins(monkeypatch):
    monkeypatch.setenv("REWARDKIT_DISABLE_PLUGINS", "builtin")
    r = Registry()
    [info] = [p for p in r.plugins() if p.name == "builtin"]
    assert info.disabled and "exact_match" not in r.names("rewards")
    with pytest.raises(PluginError, match="disabled by REWARDKIT_DISABLE_PLUGINS: .*builtin"):
        r.get("rewards", "exact_match")


def test_import_rewardkit_and_listing_plugins_load_no_torch():
    code = ("import sys; from rewardkit.cli import main; main(['plugins']); "
            "assert 'torch' not in sys.modules and 'trl' not in sys.modules, 'heavy import'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "exact_match" in out.stdout


def test_broken_installed_plugin_is_listed_and_named_when_needed(monkeypatch):
    from importlib import metadata

    from rewardkit import registry as reg

    broken = metadata.EntryPoint(name="broken", value="no_such_module_abc.plugin", group="rewardkit")
    real = metadata.entry_points

    def fake(group):
        return list(real(group=group)) + ([broken] if group == "rewardkit" else [])

    monkeypatch.setattr(reg.metadata, "entry_points", fake)
    r = Registry()
    [info] = [p for p in r.plugins() if p.name == "broken"]
    assert "ModuleNotFoundError" in info.error and "no_such_module_abc" in info.error
    assert "exact_match" in r.names("rewards")  # the others still load
    with pytest.raises(PluginError, match="plugin 'broken' .* failed to load: ModuleNotFoundError"):
        r.get("rewards", "broken.reward")
