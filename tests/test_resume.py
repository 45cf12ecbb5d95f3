"""Resume: a run killed with SIGKILL mid-training continues from its last checkpoint; nothing runs twice."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from rewardkit.cli import main
from rewardkit.run_state import checkpoints, last_checkpoint, rewind_log

# Runs the CLI with one extra reward: a slow one, so that the test can kill the run between two checkpoints.
DRIVER = '''
import sys, time
from rewardkit.cli import main
from rewardkit.registry import get_registry

def slow_sevens(prompts, completions, **kwargs):
    time.sleep(0.4)
    return [c.count("7") / max(len(c), 1) for c in completions]

get_registry().add("rewards", "slow_sevens", slow_sevens, dist="tests")
sys.exit(main(sys.argv[1:]))
'''
MAX_STEPS = 10


def tree_hashes(path):
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def lines(path):
    with open(path) as f:
        return f.readlines()


def write_recipe(tmp_path):
    recipe = {
        "output_dir": str(tmp_path / "out"), "seed": 0, "model": {"name": "tiny-llama"},
        "data": {"name": "arithmetic", "params": {"n_train": 200, "n_test": 10}},
        "stages": {
            "sft": {"trainer": {"type": "sft", "max_steps": 3, "per_device_train_batch_size": 8}},
            "grpo": {"trainer": {"type": "grpo", "max_steps": MAX_STEPS, "per_device_train_batch_size": 4,
                                 "num_generations": 4, "max_completion_length": 4, "logging_steps": 1,
                                 "save_steps": 2, "save_total_limit": 20},
                     "rewards": [{"name": "slow_sevens"}]}}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return str(path)


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    recipe = write_recipe(tmp_path)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out, grpo = tmp_path / "out", tmp_path / "out" / "grpo"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first_log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, str(driver), "run", recipe], stdout=first_log,
                            stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 400
    try:
        while not (grpo / "checkpoint-4" / "trainer_state.json").exists():
            assert proc.poll() is None, f"run ended early:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
            assert time.time() < deadline, "no checkpoint-4 in time"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)  # kill -9, mid-training
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((grpo / "stage.json").read_text())["status"] == "running"

    # What the killed run left: the last complete checkpoint is where the resumed run must start.
    step, _ = last_checkpoint(str(grpo))
    assert 4 <= step < MAX_STEPS
    kept = {s: tree_hashes(p) for s, p, complete in checkpoints(str(grpo)) if complete}
    log_before = lines(grpo / "log.jsonl")
    sft_before = tree_hashes(out / "sft")

    resumed = subprocess.run([sys.executable, str(driver), "run", recipe, "--resume"], capture_output=True,
                             text=True, env=env, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "stage 'sft': finished in a previous run (3 steps), not trained again" in resumed.stdout
    assert f"resuming from {grpo / f'checkpoint-{step}'} (step {step})" in resumed.stdout

    # Full step count; the checkpoints and logs written before the kill are intact.
    state = json.loads((grpo / "stage.json").read_text())
    assert state["status"] == "done" and state["info"]["steps"] == MAX_STEPS
    assert state["info"]["resumed_from_step"] == step
    for s, hashes in kept.items():
        assert tree_hashes(grpo / f"checkpoint-{s}") == hashes, f"checkpoint-{s} changed"
    assert tree_hashes(out / "sft") == sft_before  # the finished stage was not trained again
    log_after = lines(grpo / "log.jsonl")
    kept_rows = [line for line in log_before if json.loads(line)["step"] <= step]
    assert log_after[:len(kept_rows)] == kept_rows
    discarded = [line for line in log_before if json.loads(line)["step"] > step]
    if discarded:  # rows of steps trained after the checkpoint, before the kill: set aside, not lost
        assert lines(grpo / "log.discarded.jsonl") == discarded
    # Nothing trained twice: every step is logged exactly once, from 1 to MAX_STEPS.
    steps = [json.loads(line)["step"] for line in log_after if "loss" in json.loads(line)]
    assert steps == list(range(1, MAX_STEPS + 1)), steps
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and [s["steps"] for s in summary["stages"]] == [3, MAX_STEPS]


def exact_match_recipe(tmp_path):
    """The test recipe with the built-in reward in place of the test-only one (for in-process CLI runs)."""
    recipe = write_recipe(tmp_path)
    with open(recipe) as f:
        body = yaml.safe_load(f)
    body["stages"]["grpo"]["rewards"] = [{"name": "exact_match"}]
    with open(recipe, "w") as f:
        yaml.safe_dump(body, f, sort_keys=False)  # stage order is the mapping's order
    return recipe


def test_resume_with_nothing_to_resume_is_a_user_error(tmp_path, builtin_registry, capsys):
    recipe = exact_match_recipe(tmp_path)
    assert main(["run", recipe, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume in" in err and "Traceback" not in err


def test_changed_recipe_is_not_resumed_silently(tmp_path, builtin_registry, capsys):
    recipe = exact_match_recipe(tmp_path)
    sft = tmp_path / "out" / "sft"
    sft.mkdir(parents=True)
    old = {"trainer": "sft", "trainer_args": {"max_steps": 99}}
    (sft / "stage.json").write_text(json.dumps({"status": "done", "fingerprint": "0" * 16, "config": old,
                                                "info": {"name": "sft", "steps": 99, "model_dir": "x"}}))
    assert main(["run", recipe]) == 2
    err = capsys.readouterr().err
    assert "stage 'sft'" in err and "different configuration (changed: " in err and "trainer_args" in err
    assert "--fresh" in err


def test_rewind_log_and_checkpoint_choice(tmp_path):
    log = tmp_path / "log.jsonl"
    rows = [json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3, 4)]
    log.write_text("".join(rows) + '{"step": 5, "lo')  # the last line was cut short by the kill
    assert rewind_log(str(log), 2) == 3
    assert log.read_text() == "".join(rows[:2])
    assert (tmp_path / "log.discarded.jsonl").read_text() == "".join(rows[2:]) + '{"step": 5, "lo\n'
    for step, complete in ((2, True), (4, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_checkpoint(str(tmp_path)) == (4, str(tmp_path / "checkpoint-4"))  # 6 was cut short
