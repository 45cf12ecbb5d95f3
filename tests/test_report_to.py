"""report_to from a recipe: TensorBoard and trackio (local, offline) receive TRL's metrics and rewardkit's own
(held-out scores, early-stop scores, health alarms, the stage's final evaluation) — rewardkit.report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rewardkit import cli, report
from rewardkit.recipe import load_recipe

pytest.importorskip("tensorboard")
pytest.importorskip("trackio")

RECIPE = """\
output_dir: {out}
seed: 0
model: {{name: tiny-llama}}
data: {{name: arithmetic, params: {{n_train: 64, n_test: 8, n_val: 8}}}}
eval: {{reward: exact_match, max_new_tokens: 4}}
monitor: {{eval_every: 1, eval_n: 4, window: 1}}
stages:
  grpo:
    trainer: {{type: grpo, max_steps: 2, per_device_train_batch_size: 8, num_generations: 4,
              max_completion_length: 4, logging_steps: 1, save_strategy: "no", report_to: {report_to}}}
    rewards: [{{name: test.one}}, {{name: test.fading}}]
    early_stop: {{every: 1, target: 1.0, n: 4}}
"""

# Run in a fresh process, as `rewardkit run` is: trackio reads its store's location once, on import. Two rewards,
# one of which stops paying after its first call, make reward_dominance fire at step 2 on any model. Every
# socket connection is recorded: a local run must reach nothing.
SCRIPT = """\
import json, socket, sys
connects = []
_connect = socket.socket.connect
def connect(self, address):
    connects.append(repr(address))
    return _connect(self, address)
socket.socket.connect = connect

import rewardkit.builtin
from rewardkit.pipeline import run
from rewardkit.recipe import load_recipe
from rewardkit.registry import Registry

calls = []
def one(completions, **kwargs):
    return [1.0] * len(completions)
def fading(completions, **kwargs):
    calls.append(1)
    return [1.0 if len(calls) == 1 else 0.0] * len(completions)
reg = Registry(entry_points=False)
reg.add_plugin(rewardkit.builtin, "builtin", dist="rewardkit")
reg.add("rewards", "test.one", one)
reg.add("rewards", "test.fading", fading)
summary = run(load_recipe(sys.argv[1], registry=reg), reg)
json.dump({"connects": connects, "summary": summary}, open(sys.argv[2], "w"), default=str)
"""


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory):
    """One tiny GRPO run reporting to TensorBoard and trackio; (output_dir, what the script saw)."""
    tmp = tmp_path_factory.mktemp("report_to")
    out = tmp / "run"
    (tmp / "r.yaml").write_text(RECIPE.format(out=out, report_to="[tensorboard, trackio]"))
    (tmp / "run.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKIO_", "TENSORBOARD_"))}
    env.update(REWARDKIT_CACHE=str(tmp_path_factory.getbasetemp() / "rk-cache"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(tmp / "run.py"), str(tmp / "r.yaml"), str(tmp / "seen.json")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seen = json.loads((tmp / "seen.json").read_text())
    seen["stdout"] = proc.stdout
    return out, seen


def _alarm_step(seen) -> int:
    (alarm,) = seen["summary"]["health"]["grpo"]["alarms"]
    assert alarm["alarm"] == "reward_dominance"
    return alarm["step"]


def test_tensorboard_event_files_carry_trls_reward_and_rewardkits_own_metrics(reported_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, seen = reported_run
    logdir = out / "grpo" / "tensorboard"  # the stage's folder, no timestamped subfolder
    assert f"stage 'grpo' reports to tensorboard {logdir}" in seen["stdout"]
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    steps = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert [s for s, _ in steps["train/reward"]] == [1, 2]  # TRL's own, through TRL's logger
    assert [s for s, _ in steps["train/rewards/test.fading/mean"]] == [1, 2]
    assert [s for s, _ in steps["train/rewardkit/heldout_score"]] == [1, 2]  # monitor.eval_every: 1
    assert [s for s, _ in steps["train/rewardkit/early_stop_score"]] == [1, 2]
    assert steps["train/rewardkit/alarm/reward_dominance"] == [(_alarm_step(seen), 1.0)]
    final = seen["summary"]["eval"][-1]
    assert final["after"] == "grpo"
    assert steps["train/rewardkit/eval/score"] == [(2, pytest.approx(final["score"]))]  # after the stage


def test_trackio_keeps_a_local_store_with_the_same_metrics_and_reaches_no_network(reported_run):
    out, seen = reported_run
    store = out / "grpo" / "trackio"  # the stage's folder; project = the output folder's name, run = the stage
    assert f"trackio {store} (project 'run', run 'grpo'" in seen["stdout"]
    assert seen["connects"] == []
    code = ("import json, sys; from trackio.sqlite_storage import SQLiteStorage as S; "
            "print(json.dumps({'runs': S.get_runs('run'), 'logs': S.get_logs('run', 'grpo')}))")
    env = {**os.environ, "TRACKIO_DIR": str(store)}
    got = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
    assert got["runs"] == ["grpo"]

    def at(key):
        return [(row["train/global_step"], row[key]) for row in got["logs"] if key in row]

    assert [s for s, _ in at("train/reward")] == [1, 2]
    assert [s for s, _ in at("train/rewardkit/heldout_score")] == [1, 2]
    assert [s for s, _ in at("train/rewardkit/early_stop_score")] == [1, 2]
    assert at("train/rewardkit/alarm/reward_dominance") == [(_alarm_step(seen), 1.0)]
    assert [s for s, _ in at("train/rewardkit/eval/score")] == [2]


def _write(tmp_path, report_to: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(out=tmp_path / "run", report_to=report_to)
                    .replace("test.one", "exact_match").replace(", {name: test.fading}", ""))
    return str(path)


def test_an_unknown_backend_or_a_missing_package_is_refused_before_any_model_loads(tmp_path, capsys, monkeypatch):
    assert cli.main(["validate", _write(tmp_path, "[tensorbord, wandb_x]")]) == 2
    err = capsys.readouterr().err
    assert "stages.grpo.trainer.report_to: unknown logging integration 'tensorbord' (did you mean " \
           "'tensorboard'?)" in err
    assert "unknown logging integration 'wandb_x'" in err
    assert not (tmp_path / "run").exists()

    monkeypatch.setattr(report, "_installed", lambda name: name != "trackio")
    assert cli.main(["validate", _write(tmp_path, "trackio")]) == 2
    assert ("stages.grpo.trainer.report_to: 'trackio' needs the trackio package, which is not installed: pip install "
            "trackio (or pip install 'rewardkit[track]' for tensorboard and trackio)") in capsys.readouterr().err


def test_report_to_names_project_and_run_after_the_run_and_the_stage_and_does_not_change_what_a_stage_trains(
        tmp_path, registry):
    from rewardkit import run_state

    quiet = load_recipe(_write(tmp_path, "none"), registry=registry)
    loud = load_recipe(_write(tmp_path, "[tensorboard, trackio]"), registry=registry)
    assert run_state.stage_config(quiet, quiet.stages[0], None) == run_state.stage_config(loud, loud.stages[0], None)
    assert report.config_defaults({"report_to": "trackio"}, "grpo", str(tmp_path / "run")) == {
        "project": "run", "run_name": "grpo"}
    assert report.config_defaults({"report_to": "none"}, "grpo", "x") == {}
    assert report.names(["none"]) == [] and report.names("tensorboard") == ["tensorboard"]


def test_setup_installs_the_pinned_track_extra():
    """The environment .ci/setup built has the track extra at the versions .ci/constraints.txt pins."""
    from importlib.metadata import version

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(repo, ".ci", "constraints.txt")) as f:
        pins = dict(line.strip().lower().split("==") for line in f if "==" in line and not line.startswith("#"))
    assert {name: version(name) for name in ("tensorboard", "trackio")} == {n: pins[n] for n in ("tensorboard",
                                                                                                  "trackio")}
