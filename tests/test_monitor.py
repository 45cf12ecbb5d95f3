"""The training health monitor: each check on numbers worked by hand, the recipe section, and real runs."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from rewardkit import monitor as m
from rewardkit.errors import RecipeError
from rewardkit.recipe import load_recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- the checks
def test_length_drift_both_ways():
    assert m.length_drift([4, 4, 8], 2, 2.0) is None  # fewer than 2 windows
    hit = m.length_drift([4, 4, 8, 8], 2, 2.0)
    assert (hit["start"], hit["now"]) == (4, 8) and "x2.00" in hit["message"]
    assert m.length_drift([4, 4, 7.9, 8], 2, 2.0) is None  # x1.99
    assert m.length_drift([4, 4, 2, 2], 2, 2.0)["now"] == 2  # halved


def test_shares_and_dominance():
    assert m.shares({"a": 1.0, "b": 0.5}, {"a": 1.0, "b": -2.0}) == {"a": 0.5, "b": 0.5}
    assert m.shares({"a": 0.0}, {"a": 1.0}) is None
    rising = [{"a": 0.5, "b": 0.5}] * 2 + [{"a": 0.95, "b": 0.05}] * 2
    hit = m.reward_dominance(rising, 2, 0.9)
    assert hit["component"] == "a" and hit["now"] == pytest.approx(0.95) and hit["start"] == 0.5
    assert m.reward_dominance([{"a": 0.92, "b": 0.08}] * 4, 2, 0.9) is None  # dominated from the start
    assert m.reward_dominance([{"a": 1.0}] * 4, 2, 0.9) is None  # one component


def test_kl_acceleration_needs_faster_growth_than_before():
    hit = m.kl_acceleration([0.01, 0.01, 0.012, 0.012, 0.03, 0.03], 2, 2.0, 0.01)
    assert hit["windows"] == pytest.approx([0.01, 0.012, 0.03])  # x1.2, then x2.5
    assert m.kl_acceleration([0.01, 0.01, 0.02, 0.02, 0.04, 0.04], 2, 2.0, 0.01) is None  # steady x2, x2
    assert m.kl_acceleration([0.02, 0.02, 0.01, 0.01, 0.025, 0.025], 2, 2.0, 0.01) is None  # noise: fell first
    assert m.kl_acceleration([0.001, 0.001, 0.0012, 0.0012, 0.003, 0.003], 2, 2.0, 0.01) is None  # below kl_min
    assert m.kl_acceleration([0.0, 0.0, 0.01, 0.01, 0.05, 0.05], 2, 2.0, 0.01) is None  # from 0: x inf before


def test_entropy_collapse_and_zero_variance_groups():
    assert m.entropy_collapse([1, 1, 0.1, 0.1], 2, 0.1)["now"] == 0.1
    assert m.entropy_collapse([1, 1, 0.2, 0.2], 2, 0.1) is None
    assert m.zero_variance_groups([0.25, 0.25, 0.75, 0.75], 2, 0.5)["now"] == 0.75
    assert m.zero_variance_groups([0.25, 0.25, 0.5, 0.5], 2, 0.5) is None


def test_reward_up_eval_down_compares_windows():
    evals = [(10, 0.5, 0.1), (20, 0.6, 0.2), (30, 0.6, 0.3), (40, 0.45, 0.5), (50, 0.45, 0.6)]
    hit = m.reward_up_eval_down(evals, 2, 0.1)  # best window (20,30): 0.60, reward 0.25; last (40,50): 0.45, 0.55
    assert hit["best"] == [30, pytest.approx(0.6), pytest.approx(0.25)] and hit["now"][1] == pytest.approx(0.45)
    falling_reward = [(s, score, 1.0 - r) for s, score, r in evals]
    assert m.reward_up_eval_down(falling_reward, 2, 0.1) is None  # eval fell, but so did the reward
    assert m.reward_up_eval_down(evals[:3], 2, 0.1) is None


def test_monitor_fires_each_alarm_once_and_stops_on_request():
    mon = m.HealthMonitor(m.resolve({"stop_on": ["length_drift"]}), {"a": 1.0})
    records = [{"reward": 0.1, "completions/mean_length": x, "rewards/a/mean": 0.1} for x in (4, 4, 9, 9, 9)]
    fired = [mon.observe(10 * i, r) for i, r in enumerate(records)]
    assert [[a["alarm"] for a in f] for f in fired] == [[], [], [], ["length_drift"], []]
    assert mon.should_stop(fired[3])["step"] == 30 and mon.report()["stopped_by"]["alarm"] == "length_drift"
    assert mon.watched()["length_drift"] == "watched" and mon.watched()["kl_acceleration"] == "not logged"
    assert mon.observe(60, {"train_runtime": 1.0}) == []  # the final summary record is not a training record


def test_zero_variance_alarm_reads_what_dynamic_sampling_generated():
    """Under dynamic sampling the trained groups carry signal by construction (frac_reward_zero_std ~ 0), so the
    alarm reads dynamic_sampling/generated_frac_reward_zero_std: a rise there fires it."""
    mon = m.HealthMonitor(m.resolve({}), {"a": 1.0})
    rows = [{"reward": 0.5, "frac_reward_zero_std": 0.0, "dynamic_sampling/generated_frac_reward_zero_std": z,
             "rewards/a/mean": 0.5} for z in (0.1, 0.1, 0.9, 0.9, 0.9)]
    fired = [a["alarm"] for i, r in enumerate(rows) for a in mon.observe(10 * i, r)]
    assert fired == ["zero_variance_groups"]


def test_replay_of_a_log(tmp_path):
    path = tmp_path / "log.jsonl"
    rows = [{"step": s, "reward": 0.5, "completions/mean_length": 3.0, "entropy": e, "rewards/c/mean": 0.5}
            for s, e in ((10, 0.5), (20, 0.5), (30, 0.04), (40, 0.04))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    mon = m.replay(m.read_log(str(path)))
    assert [(a["alarm"], a["step"]) for a in mon.alarms] == [("entropy_collapse", 40)]
    assert len(m.read_log(str(path), up_to=20)) == 2


# --------------------------------------------------------------------------- the recipe section
def _recipe(tmp_path, monitor_yaml: str, stage_monitor: str = "") -> str:
    path = tmp_path / "r.yaml"
    path.write_text(f"""output_dir: {tmp_path / 'run'}
model: {{name: tiny-llama}}
data: {{name: arithmetic, params: {{n_train: 100, n_test: 10}}}}
{monitor_yaml}
stages:
  grpo:
    trainer: {{type: grpo, max_steps: 1}}
    rewards: [exact_match]
    {stage_monitor}
""")
    return str(path)


def test_monitor_section_is_validated(tmp_path, builtin_registry):
    bad = "monitor: {windw: 2, dominance: 1.5, eval_every: '3', stop_on: [length, entropy_collapse]}"
    with pytest.raises(RecipeError) as exc:
        load_recipe(_recipe(tmp_path, bad))
    text = str(exc.value)
    assert "monitor.windw: unknown key (did you mean 'window'?)" in text
    assert "monitor.dominance: must be in (0.5, 1], got 1.5" in text
    assert "monitor.eval_every: expected an integer, got str '3'" in text
    assert "monitor.stop_on[0]: must be one of length_drift, " in text and "got 'length' (did you mean 'length_drift'?)" in text
    assert "entropy_collapse" not in text.split("stop_on[0]")[0]


def test_stage_monitor_overrides_the_recipe_one(tmp_path, builtin_registry):
    recipe = load_recipe(_recipe(tmp_path, "monitor: {window: 3, stop_on: [kl_acceleration]}",
                                 "monitor: {enabled: false}"))
    assert recipe.stages[0].monitor == m.Monitor(window=3, stop_on=("kl_acceleration",), enabled=False)
    assert m.resolve(recipe.stages[0].monitor).length_ratio == 2.0 == m.Monitor.length_ratio


def test_every_rl_stage_gets_the_monitor():
    from rewardkit.trainers.grpo_is import GRPOISStage  # noqa: PLC0415
    from rewardkit.trainers.ppo import PPOStage  # noqa: PLC0415
    from rewardkit.trainers.trl_stages import GRPOStage  # noqa: PLC0415

    assert GRPOISStage.build_trainer is GRPOStage.build_trainer is PPOStage.build_trainer


# --------------------------------------------------------------------------- real runs on the tiny model
LENGTH_RECIPE = """\
output_dir: {out}
seed: 0
model: {{name: tiny-llama}}
data: {{name: arithmetic, params: {{n_train: 2000, n_test: 50}}}}
stages:
  sft:   # teaches "digits, then end of sequence": completions start about 3 tokens long
    trainer: {{type: sft, max_steps: 80, learning_rate: 3.0e-3, per_device_train_batch_size: 64,
              lr_scheduler_type: constant, logging_steps: 40, save_strategy: "no"}}
  grpo:
    trainer: {{type: grpo, max_steps: 40, learning_rate: 1.0e-3, per_device_train_batch_size: 16,
              num_generations: 4, max_completion_length: 16, logging_steps: 2, lr_scheduler_type: constant,
              save_strategy: "no"}}
    rewards: [{{name: test.length}}]
    monitor: {{stop_on: [length_drift]}}
"""


def pays_for_length(prompts, completions, **kwargs):
    return [len(c) / 16 for c in completions]


@pytest.mark.slow
def test_a_reward_that_pays_for_length_fires_the_length_alarm_and_the_stop_resumes(tmp_path, builtin_registry,
                                                                                   capsys):
    from rewardkit.pipeline import run  # noqa: PLC0415

    builtin_registry.add("rewards", "test.length", pays_for_length)
    path = tmp_path / "r.yaml"
    path.write_text(LENGTH_RECIPE.format(out=tmp_path / "run"))
    recipe = load_recipe(str(path), registry=builtin_registry)
    with pytest.raises(m.HealthStop, match="stopped by the health monitor at step .* on length_drift"):
        run(recipe, builtin_registry)
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    stop = summary["health"]["grpo"]["stopped_by"]
    assert stop["alarm"] == "length_drift" and stop["now"] >= 2 * stop["start"] and stop["step"] < 40
    assert f"health: stage 'grpo' step {stop['step']}: length_drift: mean completion length" in out
    assert os.path.isdir(tmp_path / "run" / "grpo" / f"checkpoint-{stop['step']}")  # kept for the resume
    assert not summary["complete"]

    summary = run(recipe, builtin_registry)  # the same command resumes; the alarm that fired does not stop it
    assert summary["complete"] and summary["stages"][-1]["resumed_from_step"] == stop["step"]
    alarms = summary["health"]["grpo"]["alarms"]
    assert [a["step"] for a in alarms if a["alarm"] == "length_drift"] == [stop["step"]]
    assert "health (training monitor):" in capsys.readouterr().out


@pytest.mark.slow
def test_a_short_quick_start_raises_no_alarm(tmp_path, builtin_registry, capsys, stage_cache):
    """The quick start with its GRPO stage shortened to 40 steps (its SFT is the quick-start test's, from the stage
    cache when that test ran first)."""
    from rewardkit.pipeline import run  # noqa: PLC0415

    overrides = [f"output_dir={tmp_path / 'run'}", "stages.grpo.trainer.max_steps=40",
                 "stages.grpo.trainer.logging_steps=4", "eval.samples=0"]
    recipe = load_recipe(os.path.join(REPO, "recipes", "quickstart.yaml"), overrides, registry=builtin_registry)
    summary = run(recipe, builtin_registry)
    health = summary["health"]["grpo"]
    assert health["alarms"] == [] and health["stopped_by"] is None
    assert {k for k, v in health["checks"].items() if v == "watched"} == {
        "length_drift", "entropy_collapse", "zero_variance_groups", "reward_up_eval_down"}
    assert "stage grpo: 0 alarm(s)" in capsys.readouterr().out
    evals = [r for r in m.read_log(str(tmp_path / "run" / "grpo" / "log.jsonl")) if m.EVAL_KEY in r]
    assert [r["step"] for r in evals] == [4 * i for i in range(1, 11)]


class FakeTrainer:
    """What attach() touches of a trainer: its args' world size and add_callback."""

    args = SimpleNamespace(world_size=1)

    def __init__(self):
        self.callbacks = []

    def add_callback(self, cb):
        self.callbacks.append(cb)


def test_attach_respects_enabled_and_only_evaluates_with_eval(tmp_path):
    from rewardkit.recipe import RewardBlock  # noqa: PLC0415

    def ctx(monitor):
        spec = SimpleNamespace(name="grpo", monitor=monitor, evaluate=True,
                               rewards=[RewardBlock("exact_match", "correct", 0.5, {})])
        return SimpleNamespace(spec=spec, recipe=SimpleNamespace(eval=None), output_dir=str(tmp_path))

    trainer = FakeTrainer()
    assert m.attach(trainer, ctx({"enabled": False})) is None and trainer.callbacks == []
    mon = m.attach(trainer, ctx({}))
    assert trainer.health_monitor is mon and mon.weights == {"correct": 0.5}
    assert type(trainer.callbacks[0]).__name__ == "HealthCallback"
    assert m.build_evaluator(ctx({}), 8) is None  # the recipe has no eval: no held-out check
