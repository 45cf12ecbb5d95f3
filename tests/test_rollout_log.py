"""The rollout log (rewardkit/rollout_log.py) every RL stage writes, ``rewardkit show`` and ``rewardkit replay``."""

import json
import math
import os

import pytest
import torch

from rewardkit import models, rollout_log
from rewardkit.builtin.datasets import arithmetic


@pytest.fixture(scope="module")
def setup(registry):
    from transformers import AutoTokenizer

    path = models.resolve("tiny-llama", registry)
    return path, AutoTokenizer.from_pretrained(path), arithmetic(n_train=128, n_test=8)["train"]


def digits(prompts, completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / 4 for c in completions]


def right(prompts, completions, answer, **kwargs):
    """None (could not judge) for an empty completion: the log must keep it None, not 0."""
    return [None if not c.strip() else float(c.strip() == a) for c, a in zip(completions, answer)]


BASE = dict(per_device_train_batch_size=8, max_completion_length=4, learning_rate=1e-3, report_to="none",
            save_strategy="no", logging_steps=1, bf16=False, seed=0, disable_tqdm=True, max_steps=2,
            gradient_checkpointing=False)


def train(setup, tmp_path, trainer, log_kw=None, **kw):
    from rewardkit.trainers.dynamic_sampling import DynamicSamplingGRPOConfig, DynamicSamplingGRPOTrainer
    from rewardkit.trainers.grpo_is import GRPOISConfig, GRPOISTrainer
    from rewardkit.trainers.ppo import PPOTrainer
    from rewardkit.trainers.ppo_config import PPOConfig

    path, tok, ds = setup
    cfg_cls, tr_cls, extra = {"grpo": (DynamicSamplingGRPOConfig, DynamicSamplingGRPOTrainer, {"num_generations": 4}),
                              "grpo_is": (GRPOISConfig, GRPOISTrainer, {"num_generations": 4, "rollout_epochs": 1}),
                              "ppo": (PPOConfig, PPOTrainer, {"rollout_epochs": 1})}[trainer]
    args = cfg_cls(output_dir=str(tmp_path / trainer), **{**BASE, **extra, **kw})
    tr = tr_cls(model=path, args=args, train_dataset=ds, processing_class=tok, reward_funcs=[digits, right])
    tr.rollout_log = rollout_log.RolloutLog(str(tmp_path / trainer / rollout_log.FILE), **(log_kw or {}))
    tr.train()
    return tr, rollout_log.read(str(tmp_path / trainer))


@pytest.mark.parametrize("trainer", ["grpo", "grpo_is", "ppo"])
def test_every_rl_trainer_logs_whole_groups_with_their_scores(setup, tmp_path, trainer):
    tr, records = train(setup, tmp_path, trainer, {"groups": 1})
    g = 4 if trainer != "ppo" else 1
    assert len(records) == 2 * g  # one group from each of the 2 rollouts
    _, tok, ds = setup
    for r in records:
        assert set(r["rewards"]) == {"digits", "right"} and r["finish_reason"] in ("stop", "truncated")
        assert r["columns"]["answer"] and r["length"] <= 4
        judged = [v for v in r["rewards"].values() if v is not None]
        assert r["reward"] == pytest.approx(sum(judged)) if judged else r["reward"] is None
        assert r["rewards"]["digits"] == pytest.approx(digits(None, [r["completion"]])[0])
        if r["row"] is not None:  # ppo and grpo_is know the dataset row
            assert ds[r["row"]]["prompt"] == r["prompt"]
    if trainer == "ppo":
        assert all("advantage_sum" in r for r in records)
    else:
        assert all(r["row"] is not None for r in records) or trainer == "grpo"
        for grp in rollout_log.groups(records):  # GRPO advantages: above the group's mean reward <=> positive
            mean = sum(r["reward"] or 0.0 for r in grp) / len(grp)
            assert all((r["advantage"] > 1e-6) == ((r["reward"] or 0.0) > mean + 1e-6) for r in grp)
    assert tr.rollout_log.report()["records"] == len(records) and tr.rollout_log.seconds > 0


def test_the_log_reads_with_datasets_and_keeps_could_not_judge(setup, tmp_path):
    from datasets import load_dataset

    _, records = train(setup, tmp_path, "grpo", {"groups": 2})
    rows = load_dataset("json", data_files=str(tmp_path / "grpo" / rollout_log.FILE), split="train")
    assert len(rows) == len(records) and rows[0]["completion"] == records[0]["completion"]
    empty = [r for r in records if not r["completion"].strip()]
    assert all(r["rewards"]["right"] is None for r in empty)


def test_size_bound_and_sampling_rate(setup, tmp_path):
    _, every = train(setup, tmp_path / "every", "grpo", {"groups": 1, "every": 2}, max_steps=3)
    assert {r["rollout"] for r in every} == {1, 3}
    _, tiny = train(setup, tmp_path / "tiny", "grpo", {"groups": 2, "max_mb": 1e-3})
    lines = (tmp_path / "tiny" / "grpo" / rollout_log.FILE).read_text().splitlines()
    assert json.loads(lines[-1])["truncated"] is True and len(tiny) < 8


def test_dynamic_sampling_logs_the_groups_it_kept(setup, tmp_path):
    def half_constant(prompts, completions, answer, **kwargs):
        return [1.0 if int(a) % 2 == 0 else sum(ch.isdigit() for ch in c) / 5 + 0.1 * len(c)
                for c, a in zip(completions, answer)]

    from rewardkit.trainers.dynamic_sampling import DynamicSamplingGRPOConfig, DynamicSamplingGRPOTrainer

    path, tok, ds = setup
    args = DynamicSamplingGRPOConfig(output_dir=str(tmp_path), **{**BASE, "per_device_train_batch_size": 16},
                                     num_generations=4, dynamic_sampling=True, dynamic_sampling_max_rounds=8)
    tr = DynamicSamplingGRPOTrainer(model=path, args=args, train_dataset=ds, processing_class=tok,
                                    reward_funcs=[half_constant])
    tr.rollout_log = rollout_log.RolloutLog(str(tmp_path / rollout_log.FILE), groups=4)
    tr.train()
    groups = rollout_log.groups(rollout_log.read(str(tmp_path)))
    assert groups and all(len({r["reward"] for r in g}) > 1 for g in groups)  # every logged group carries signal


def test_show_and_replay(setup, tmp_path, registry, capsys, monkeypatch):
    from rewardkit import cli
    from rewardkit.replay import replay, show

    train(setup, tmp_path, "grpo", {"groups": 2})
    text = show(str(tmp_path), order="best", groups=1)
    assert "prompt:" in text and "mean reward" in text and text.count("adv ") == 4
    assert show(str(tmp_path), step=0).startswith(os.path.join(str(tmp_path), "grpo", rollout_log.FILE))
    # exact_match is strict where `right` could not judge: the component `right` is replaced by it
    rep = replay(str(tmp_path), registry, "exact_match", alias="right")
    assert rep["compared_with"] == "component 'right'" and rep["completions"] == len(rollout_log.read(str(tmp_path / "grpo")))
    assert rep["groups_compared"] >= 1 and rep["scores_changed"] >= rep["judged_changed"]
    # the same reward as logged changes nothing
    from rewardkit.registry import Registry
    import rewardkit.builtin
    import types

    mine = Registry(entry_points=False)
    mine.add_plugin(rewardkit.builtin, "builtin", dist="rewardkit")

    @rewardkit.hookimpl
    def register_rewards(register):
        register("digits", digits)

    mine.add_plugin(types.SimpleNamespace(register_rewards=register_rewards), "t", dist="t")
    same = replay(str(tmp_path), mine, "digits")
    assert same["scores_changed"] == 0 and same["advantage_sign_flips"] == 0 and same["group_rankings_changed"] == 0
    monkeypatch.setattr("rewardkit.registry.get_registry", lambda: mine)
    capsys.readouterr()  # what training printed
    assert cli.main(["replay", str(tmp_path), "--reward", "digits", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scores_changed"] == 0
    assert cli.main(["show", str(tmp_path), "--worst"]) == 0 and "mean reward" in capsys.readouterr().out
    assert cli.main(["show", str(tmp_path / "nothing")]) == 2
    assert "no run folder" in capsys.readouterr().err


def test_problems_name_the_field():
    assert rollout_log.problems({"every": 0, "max_mb": -1, "groupz": 1}) == [
        "rollout_log.every: must be at least 1, got 0", "rollout_log.max_mb: must be above 0, got -1",
        "rollout_log.groupz: unknown key (did you mean 'groups'?)"]
    assert rollout_log.problems({"enabled": "yes"})[0].startswith("rollout_log.enabled: expected true/false")


def test_monitor_alarms_carry_the_completions_that_show_them():
    from rewardkit import monitor

    recent = [{"step": s, "prompt": "p", "completion": "x" * n, "length": n, "rewards": {"a": r}, "reward": r}
              for s, n, r in ((1, 2, 0.1), (2, 9, 0.2), (3, 4, 0.9))]
    assert [e["length"] for e in monitor.examples("length_drift", recent)] == [9, 4, 2]
    assert [e["reward"] for e in monitor.examples("reward_dominance", recent)][0] == 0.9
    assert [e["step"] for e in monitor.examples("entropy_collapse", recent)] == [3, 2, 1]
    assert not math.isnan(recent[0]["reward"]) and torch is not None


def test_recipe_section_is_validated_and_reaches_the_stage(tmp_path, registry):
    from rewardkit.errors import RecipeError
    from rewardkit.recipe import load_recipe
    from rewardkit.recipe_schema import RolloutLog

    def write(extra):
        path = tmp_path / "r.yaml"
        path.write_text(f"""output_dir: {tmp_path / 'run'}
model: {{name: tiny-llama}}
data: {{name: arithmetic, params: {{n_train: 100, n_test: 10}}}}
rollout_log: {{groups: 3}}
stages:
  grpo:
    trainer: {{type: grpo, max_steps: 1}}
    rewards: [exact_match]
    {extra}
""")
        return str(path)

    spec = load_recipe(write("rollout_log: {every: 4}"), registry=registry).stages[0]
    assert spec.rollout_log == RolloutLog(groups=3, every=4)
    with pytest.raises(RecipeError, match=r"stages.grpo.rollout_log.every: must be at least 1, got 0"):
        load_recipe(write("rollout_log: {every: 0}"), registry=registry)


def test_a_recipe_run_writes_the_log_and_reports_its_cost(tmp_path, capsys):
    from rewardkit import cli

    path = tmp_path / "r.yaml"
    path.write_text(f"""output_dir: {tmp_path / 'run'}
model: {{name: tiny-llama}}
data: {{name: arithmetic, params: {{n_train: 64, n_test: 8}}}}
stages:
  grpo:
    trainer: {{type: grpo, max_steps: 2, per_device_train_batch_size: 8, num_generations: 4,
              max_completion_length: 4, logging_steps: 1}}
    rewards: [exact_match]
""")
    assert cli.main(["run", str(path)]) == 0
    records = rollout_log.read(str(tmp_path / "run" / "grpo"))
    assert len(records) == 2 * 2 * 4  # 2 rollouts x 2 groups x 4 completions
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    (stage,) = [s for s in summary["stages"] if s["name"] == "grpo"]
    assert stage["rollout_log"]["records"] == 16 and stage["rollout_log"]["seconds"] >= 0
