import subprocess
import sys
import types

import pytest

import rewardkit
from rewardkit import PluginError, RewardError
from rewardkit.algorithms.kl import ESTIMATORS
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
    """check_pending after loading: a hook no spec knows is an error with did-you-mean, and the plugin is dropped
    whole (its correctly spelt hooks are not called), while the other plugins load."""
    info = fresh_registry.add_plugin(plugin("typo", register_reward=lambda register: None,
                                            register_dataset=lambda register: None,
                                            register_models=lambda register: register("half", ones)))
    fresh_registry.add_plugin(plugin("fine", register_rewards=lambda register: register("ones", ones)))
    assert fresh_registry.names("rewards") == ["ones"] and fresh_registry.names("models") == []
    assert sorted(info.errors) == ["unknown hook 'register_dataset' (did you mean 'register_datasets'?)",
                                   "unknown hook 'register_reward' (did you mean 'register_rewards'?)"]
    late = fresh_registry.add_plugin(plugin("late", register_kl=lambda register: None))  # after loading: same
    assert late.errors == ["unknown hook 'register_kl' (did you mean 'register_kl_estimators'?)"]


def test_hook_with_arguments_its_spec_lacks_is_refused_at_registration(fresh_registry):
    info = fresh_registry.add_plugin(plugin("sig", register_rewards=lambda reg: None), dist="dist-sig")
    fresh_registry.add_plugin(plugin("fine", register_rewards=lambda register: register("ones", ones)))
    assert fresh_registry.names("rewards") == ["ones"]
    [error] = info.errors
    assert error.startswith("PluginValidationError") and "{'reg'}" in error


def test_every_failing_hook_is_kept_and_shown(fresh_registry, capsys):
    """A plugin whose two hooks raise keeps both errors (the second used to overwrite the first); what its
    other hooks registered stays, and a later plugin still loads."""
    def boom(register):
        raise RuntimeError("no GPU")

    def bust(register):
        raise ValueError("bad data dir")

    info = fresh_registry.add_plugin(plugin("two", register_rewards=boom, register_datasets=bust,
                                            register_models=lambda register: register("m", ones)), dist="dist-two")
    fresh_registry.add_plugin(plugin("after", register_rewards=lambda register: register("ones", ones)))
    assert fresh_registry.names("rewards") == ["ones"] and fresh_registry.names("models") == ["m"]
    assert info.errors == ["register_rewards failed: RuntimeError: no GPU",
                           "register_datasets failed: ValueError: bad data dir"]
    with pytest.raises(PluginError, match="failed to load: register_rewards failed: RuntimeError: no GPU; "
                                          "register_datasets failed: ValueError: bad data dir"):
        fresh_registry.get("rewards", "gpu.reward")
    from rewardkit.cli import main

    main(["plugins"])
    out = capsys.readouterr().out
    assert "    ERROR: register_rewards failed: RuntimeError: no GPU\n" in out
    assert "    ERROR: register_datasets failed: ValueError: bad data dir\n" in out


def test_disabled_plugins_are_blocked_in_the_plugin_manager():
    """By plugin name or distribution name; '*' blocks everything but rewardkit's own distribution. A blocked
    plugin's hooks are never called, and it is listed as disabled."""
    called = []
    mod = plugin("extra", register_rewards=lambda register: called.append("extra"))
    r = Registry(entry_points=False, disabled=["dist_extra"])  # names are compared with -, _ and . alike
    info = r.add_plugin(mod, "extra", dist="dist-extra")
    kept = r.add_plugin(plugin("own", register_rewards=lambda register: register("ones", ones)), dist="rewardkit")
    assert r.names("rewards") == ["ones"] and called == [] and info.disabled and not kept.disabled
    assert r._pm.is_blocked("extra")
    with pytest.raises(PluginError, match="disabled by REWARDKIT_DISABLE_PLUGINS: extra"):
        r.get("rewards", "extra.reward")
    star = Registry(entry_points=False, disabled=["*"])
    assert star.add_plugin(mod, "extra", dist="dist-extra").disabled
    assert not star.add_plugin(plugin("own"), "own", dist="rewardkit").disabled
    by_name = Registry(entry_points=False, disabled=["extra"])
    by_name.add_plugin(mod, "extra", dist="dist-extra")
    assert by_name.names("rewards") == [] and called == []


def test_one_plugin_manager_holds_every_plugin(fresh_registry):
    fresh_registry.add_plugin(plugin("a", register_rewards=lambda register: register("ra", ones)), dist="dist-a")
    fresh_registry.names("rewards")
    fresh_registry.add_plugin(plugin("b", register_rewards=lambda register: register("rb", ones)), dist="dist-b")
    assert fresh_registry._pm.list_name_plugin() and {n for n, _ in fresh_registry._pm.list_name_plugin()} == {"a", "b"}
    assert fresh_registry.get("rewards", "rb").dist == "dist-b" and fresh_registry.get("rewards", "ra").dist == "dist-a"


def test_plugin_name_taken_by_two_distributions_is_an_error_naming_both(fresh_registry):
    fresh_registry.add_plugin(plugin("p", register_rewards=lambda register: register("first", ones)), "shared",
                              dist="dist-a", version="1.0")
    second = fresh_registry.add_plugin(plugin("q", register_rewards=lambda register: register("second", ones)),
                                       "shared", dist="dist-b", version="2.0")
    assert fresh_registry.names("rewards") == ["first"]
    assert second.errors == ["plugin name 'shared' is registered by plugin 'shared' (dist-a 1.0) and by plugin "
                             "'shared' (dist-b 2.0); uninstall one or disable it with REWARDKIT_DISABLE_PLUGINS"]
    mod = plugin("m", register_rewards=lambda register: register("third", ones))
    fresh_registry.add_plugin(mod, "m1", dist="dist-m")
    again = fresh_registry.add_plugin(mod, "m2", dist="dist-m")
    assert again.errors == ["<module 'm'> is already registered as plugin 'm1' (dist-m 0)"]
    assert fresh_registry.names("rewards") == ["first", "third"]


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
    assert set(builtin_registry.names("kl_estimators")) == set(ESTIMATORS)
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


# ---------------------------------------------------------------- environments
class Counter:
    """A fake tool-use environment: the model adds to a counter; the reward is whether it reached the target."""

    def __init__(self, target: int = 3, start: int = 0):
        self.target, self.start, self.value = target, start, start

    def reset(self, **row) -> str | None:
        self.value = self.start
        return f"The counter is at {self.value}."

    def add(self, n: int) -> str:
        """Add to the counter.

        Args:
            n: how much to add.
        """
        self.value += n
        return str(self.value)

    def get_reward(self) -> float:
        return float(self.value == self.target)


def explodes(size: int = 1):
    raise RuntimeError("no sandbox")


class NoReset:
    def __init__(self, size: int = 1):
        self.size = size


@pytest.fixture
def env_registry(fresh_registry):
    fresh_registry.add_plugin(plugin("envs", register_environments=lambda register: (
        register("counter", Counter, description="add to a counter until it reaches the target"),
        register("counter.lazy", "tests.test_registry:Counter"),
        register("no_reset", NoReset),
        register("builds_nothing_usable", lambda size=1: object()))), dist="dist-envs")
    return fresh_registry


def test_environment_builds_a_zero_argument_factory_with_params_bound(env_registry):
    assert env_registry.names("environments") == ["builds_nothing_usable", "counter", "counter.lazy", "no_reset"]
    factory = env_registry.build_environment("counter", {"target": 5})
    first, second = factory(), factory()
    assert isinstance(first, Counter) and first is not second and first.target == 5  # one instance per rollout
    assert first.reset(prompt="p") == "The counter is at 0." and first.add(5) == "5" and first.get_reward() == 1.0
    assert second.value == 0  # instances independent
    lazy = env_registry.build_environment("counter.lazy", {})
    assert type(lazy()).__name__ == "Counter"
    assert env_registry.get("environments", "counter").dist == "dist-envs"


def test_environment_params_are_checked_against_the_factory(env_registry):
    [misspelt] = env_registry.environment_problems("counter", {"targt": 5})
    assert "environment 'counter'" in misspelt and "dist-envs" in misspelt
    assert "did you mean 'target' for 'targt'" in misspelt and "accepted params: target, start" in misspelt
    [mistyped] = env_registry.environment_problems("counter", {"target": "five"})
    assert "param 'target': expected an integer, got str 'five'" in mistyped
    assert env_registry.environment_problems("counter", {"target": 2, "start": 1}) == []
    with pytest.raises(PluginError, match="targt"):
        env_registry.build_environment("counter", {"targt": 5})


def test_unknown_environment_suggests_and_a_class_without_reset_is_refused(env_registry):
    [unknown] = env_registry.environment_problems("countr", {})
    assert "unknown environment 'countr'" in unknown and "did you mean 'counter'" in unknown
    [no_reset] = env_registry.environment_problems("no_reset", {})
    assert "class NoReset has no reset method" in no_reset
    # a factory that is not a class is only known by what it builds: refused when TRL first calls it
    factory = env_registry.build_environment("builds_nothing_usable", {"size": 2})
    with pytest.raises(PluginError, match="'builds_nothing_usable' from plugin 'envs' .* without a reset method"):
        factory()


def test_environment_factory_pickles_and_a_failing_constructor_names_the_plugin(env_registry):
    import pickle

    factory = pickle.loads(pickle.dumps(env_registry.build_environment("counter", {"target": 4})))
    assert factory().target == 4
    env_registry.add("environments", "explodes", explodes, plugin="sandboxes", dist="dist-sandbox")
    with pytest.raises(PluginError, match=r"'explodes' from plugin 'sandboxes' \(dist-sandbox 0\) failed to build "
                                          r"with params \{'size': 2\}: RuntimeError: no sandbox"):
        env_registry.build_environment("explodes", {"size": 2})()


def test_environments_are_listed_by_the_plugins_command(env_registry, capsys):
    from rewardkit.cli import main

    main(["plugins"])
    out = capsys.readouterr().out
    assert "dist-envs 0" in out and "environments: counter, counter.lazy, no_reset, builds_nothing_usable" in out


def _installed(monkeypatch, tmp_path, name, version, entry_points_txt):
    """A distribution's metadata on disk, its entry points added to what the registry discovers."""
    from importlib import metadata

    from rewardkit import registry as reg

    info = tmp_path / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(entry_points_txt)
    extra = list(metadata.PathDistribution(info).entry_points)
    real = metadata.entry_points
    monkeypatch.setattr(reg.metadata, "entry_points",
                        lambda group: list(real(group=group)) + [ep for ep in extra if ep.group == group])


def test_reward_entry_point_takes_the_plugin_road_lazily_and_can_be_blocked(monkeypatch, tmp_path):
    _installed(monkeypatch, tmp_path, "shout-reward", "1.2.3", "[rewardkit.rewards]\nshout = no_such_shout_mod:shout\n")
    r = Registry(disabled=[])
    [info] = [p for p in r.plugins() if p.dist == "shout-reward"]
    assert (info.group, info.version, info.registered, info.errors) == ("rewardkit.rewards", "1.2.3",
                                                                        {"rewards": ["shout"]}, [])
    assert r.get("rewards", "shout").provider == "plugin 'shout' (shout-reward 1.2.3)"  # listed, not imported
    with pytest.raises(PluginError, match=r"'shout' from plugin 'shout' \(shout-reward 1.2.3\).*no_such_shout_mod"):
        r.build_reward("shout")
    blocked = Registry(disabled=["shout-reward"])
    [info] = [p for p in blocked.plugins() if p.dist == "shout-reward"]
    assert info.disabled and blocked._pm.is_blocked(info.key) and "shout" not in blocked.names("rewards")
    assert "exact_match" in blocked.names("rewards")  # the others still load


def _columns_fail(params):
    raise KeyError("column")


@pytest.mark.parametrize("columns, culprit", [(_columns_fail, "_columns_fail"),
                                              ("no_such_module_rk:cols", "no_such_module_rk:cols")])
def test_a_failing_columns_target_is_a_validate_error_naming_the_plugin(builtin_registry, tmp_path, capsys,
                                                                       columns, culprit):
    from rewardkit.cli import main

    builtin_registry.add_plugin(plugin("colsplug", register_rewards=lambda register: register(
        "bad_cols", Scaled, columns=columns)), dist="dist-cols")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name: tiny-llama}\n"
                      "data: {name: arithmetic, params: {n_train: 100, n_test: 10}}\n"
                      "trainer: {type: grpo, max_steps: 2, per_device_train_batch_size: 8, num_generations: 4}\n"
                      "rewards: [{name: bad_cols, weight: 1.0}]\n")
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "rewards[0].name: reward 'bad_cols' from plugin 'colsplug' (dist-cols" in err, err
    assert f"columns= target '{culprit}' failed" in err, err
