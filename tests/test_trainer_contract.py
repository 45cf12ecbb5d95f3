"""The trainer contract is public and enough: rewardkit.Stage / StageContext exported and typed, the monitor and
the rollout log attached by what a stage declares, trainer rules kept with their trainer, and a third-party trainer
package (tests/plugins/rewardkit-toytrainer, public names only) installed through its entry point and run from a
recipe with the `rewardkit` command."""

import ast
import json
import os
import subprocess
import sys
import typing

import pytest
import yaml

import rewardkit
from tests.plugin_packages import cli, install_site
from rewardkit import Stage, StageContext
from rewardkit.trainers import base

TOY = os.path.join(os.path.dirname(__file__), "plugins", "rewardkit-toytrainer")


# --------------------------------------------------------------------------- public and typed
def test_stage_and_context_are_public_and_importing_rewardkit_stays_light(registry):
    assert {"Stage", "StageContext", "TRLStage"} <= set(rewardkit.__all__)
    assert all(issubclass(registry.load("trainers", name), rewardkit.TRLStage) for name in registry.names("trainers"))
    code = ("import sys, rewardkit; from rewardkit import Stage, StageContext, TRLStage; "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _type_checking_names() -> dict:
    """The names base.py imports under ``if TYPE_CHECKING:``, imported for real."""
    tree = ast.parse(open(base.__file__).read())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    namespace: dict = {}
    exec(compile(ast.Module(body=block.body, type_ignores=[]), base.__file__, "exec"), namespace)  # noqa: S102
    return namespace


def test_every_context_field_has_a_real_type():
    hints = typing.get_type_hints(StageContext, localns=_type_checking_names())
    assert set(hints) == {"recipe", "spec", "registry", "model_path", "tokenizer", "dataset", "output_dir",
                          "rewards", "callbacks", "report"}
    assert typing.Any not in hints.values(), hints
    assert hints["spec"].__name__ == "StageSpec" and hints["dataset"].__name__ == "DatasetDict"


# --------------------------------------------------------------------------- monitor and rollout log by declaration
class _Declares(Stage):  # not a GRPOStage: the declarations alone decide
    rollout_metrics = True
    rollout_groups = True


class _MetricsOnly(Stage):
    rollout_metrics = True


def test_monitor_and_rollout_log_attach_to_what_a_stage_declares(monkeypatch):
    from rewardkit import monitor, pipeline, rollout_log

    calls = []
    monkeypatch.setattr(rollout_log, "attach", lambda trainer, ctx: calls.append("log") or "the log")
    monkeypatch.setattr(monitor, "attach", lambda trainer, ctx: calls.append("monitor") or "the monitor")
    assert pipeline._attach(_Declares, object(), None) == ("the log", "the monitor")
    assert calls == ["log", "monitor"]  # the log first: the monitor's alarms show its records
    calls.clear()
    assert pipeline._attach(_MetricsOnly, object(), None) == (None, "the monitor") and calls == ["monitor"]
    calls.clear()
    assert pipeline._attach(Stage, object(), None) == (None, None) and calls == []


def test_builtin_stages_declare_what_their_trainers_do(registry):
    for name in ("grpo", "grpo_is", "ppo"):
        cls = registry.load("trainers", name)
        assert cls.rollout_metrics and cls.rollout_groups, name
    for name in ("sft", "dpo", "reward_model"):
        cls = registry.load("trainers", name)
        assert not cls.rollout_metrics and not cls.rollout_groups, name


# --------------------------------------------------------------------------- rules with their trainer
class _NotAStage:
    pass


class _BrokenCheck(Stage):
    @classmethod
    def check_stage(cls, spec, columns, registry):
        raise KeyError("oops")


def _spec(trainer_type="toy", **trainer_args):
    from types import SimpleNamespace

    return SimpleNamespace(trainer_type=trainer_type, trainer_args=trainer_args, rewards=[], model={})


def test_a_bad_stage_class_or_check_hook_is_one_problem_not_a_traceback(registry):
    (p,) = base.stage_problems(_NotAStage, _spec(), None, registry)
    assert p.startswith("trainer.type: trainer 'toy' is registered as") and "not a subclass of rewardkit.Stage" in p
    (p,) = base.stage_problems(_BrokenCheck, _spec(), None, registry)
    assert "_BrokenCheck) failed to check the stage: KeyError: 'oops'" in p


def test_trainer_specific_rules_are_the_trainers_own(registry):
    dpo, grpo, sft = (registry.load("trainers", n) for n in ("dpo", "grpo", "sft"))
    both = {"sync_ref_model": True, "precompute_ref_log_probs": True}
    assert any("cannot be combined with precompute_ref_log_probs" in p for p in dpo.check_args(both, registry))
    assert any("with beta: 0 has no reference model" in p
               for p in grpo.check_args({"sync_ref_model": True, "beta": 0.0}, registry))
    assert not any("beta" in p for p in dpo.check_args({"sync_ref_model": True, "beta": 0.0}, registry))
    lora = _spec("grpo", sync_ref_model=True, beta=0.1)
    lora.model = {"lora": {"r": 8}}
    lora.rewards = ["a block"]
    assert grpo.check_stage(lora, ["prompt"], registry) == [
        "trainer.sync_ref_model: TRL does not support it with LoRA (the reference is the base model with the "
        "adapter switched off); drop it or the model's lora"]
    assert sft.check_stage(_spec("sft"), ["question"], registry) == [
        "data: trainer 'sft' needs (prompt, completion) or (messages) or (text); dataset columns are question"]


def test_summary_lines_come_from_the_stage_class(registry, capsys):
    from rewardkit import pipeline

    ds = {"rounds": 4, "rollouts": 2, "dropped_groups": 3, "extra_completions": 24, "filled_zero_var_groups": 0}
    stages = [{"name": "a", "trainer": "grpo", "steps": 2, "seconds": 1.0, "dynamic_sampling": ds, "model_dir": "m"},
              {"name": "b", "trainer": "sft", "steps": 2, "seconds": 1.0, "dynamic_sampling": ds},
              {"name": "c", "trainer": "no_longer_installed", "steps": 2, "seconds": 1.0, "model_dir": "m"}]
    pipeline.print_summary({"seconds": 2, "eval": [], "stages": stages, "output_dir": "out"}, None, registry)
    out = capsys.readouterr().out
    assert out.count("dynamic sampling: 4 generation rounds for 2 rollouts") == 1  # grpo's line, not sft's
    assert "stage c: 2 steps" in out


# --------------------------------------------------------------------------- a third-party trainer package
@pytest.fixture(scope="module")
def toy_site(tmp_path_factory):
    """rewardkit-toytrainer installed by pip into a temporary folder (the venv is untouched)."""
    return install_site(TOY, tmp_path_factory.mktemp("toy"))


def _toy_recipe(tmp_path, **trainer) -> str:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "out"), "seed": 0, "model": {"name": "tiny-llama"},
        "data": {"name": "arithmetic", "params": {"n_train": 64, "n_test": 8}},
        "trainer": {"type": "toy_grpo", "max_steps": 3, "per_device_train_batch_size": 4, "num_generations": 4,
                    "max_completion_length": 4, "logging_steps": 1, "learning_rate": 1e-3, **trainer},
        "rewards": [{"name": "exact_match"}]}, sort_keys=False))
    return str(path)


def test_toy_package_imports_only_public_rewardkit_names():
    for folder, _, files in os.walk(os.path.join(TOY, "rewardkit_toytrainer")):
        for name in files:
            tree = ast.parse(open(os.path.join(folder, name)).read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rewardkit"):
                    assert node.module == "rewardkit", f"{name} imports {node.module}"
                    assert {a.name for a in node.names} <= set(rewardkit.__all__), (name, node.names)
                if isinstance(node, ast.Import):
                    assert not any(a.name.startswith("rewardkit.") for a in node.names), name


def test_installed_toy_trainer_is_listed_and_its_own_check_reaches_validate(toy_site, tmp_path):
    listed = cli(toy_site, "plugins", "--json")
    (toy,) = [p for p in json.loads(listed.stdout)["plugins"] if "toy_grpo" in p["registered"].get("trainers", [])]
    assert toy["name"] == "toytrainer" and "rewardkit-toytrainer" in toy.values(), toy  # its entry point, its dist
    good = cli(toy_site, "validate", _toy_recipe(tmp_path))
    assert good.returncode == 0 and "stages: toy_grpo (toy_grpo)" in good.stdout, good.stderr
    bad = cli(toy_site, "validate", _toy_recipe(tmp_path, num_generations=3, per_device_train_batch_size=3))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert "trainer.num_generations: toy_grpo wants an even number, got 3" in bad.stderr, bad.stderr
    without = cli(toy_site, "validate", _toy_recipe(tmp_path, type="toy_grpoo"))
    assert without.returncode == 2 and "toy_grpo" in without.stderr  # did-you-mean from the registry


@pytest.mark.slow
def test_toy_trainer_runs_from_a_recipe_with_monitor_and_summary(toy_site, tmp_path):
    out = cli(toy_site, "run", _toy_recipe(tmp_path))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    (stage,) = summary["stages"]
    assert stage["trainer"] == "toy_grpo" and stage["steps"] == 3
    assert stage["toy_logged_rewards"] == 3  # its result_metrics hook
    assert "toy_grpo: 3 reward records" in out.stdout  # its summary_lines hook
    assert "toy_grpo" in summary["health"]  # the monitor, attached because the stage declares rollout_metrics
    assert "rollout_log" not in stage  # it does not declare rollout_groups
    assert os.path.exists(os.path.join(stage["model_dir"], "model.safetensors"))
