"""REWARDKIT_STAGE_CACHE: a finished stage is trained once and copied into later runs that would train it
identically; anything that decides its result (its config, the chain before it, the machine's arithmetic) misses."""

import json
import os

import pytest

from rewardkit import stage_cache
from rewardkit.pipeline import run
from rewardkit.recipe import load_recipe
from rewardkit.registry import get_registry


def _recipe(tmp_path, out, second_lr=1e-3, first_steps=2):
    import yaml

    recipe = {
        "output_dir": str(tmp_path / out), "seed": 0, "model": {"name": "tiny-llama"},
        "data": {"name": "arithmetic", "params": {"n_train": 64, "n_test": 4}},
        "stages": {
            "first": {"trainer": {"type": "sft", "max_steps": first_steps, "per_device_train_batch_size": 8,
                                  "save_strategy": "no"}},
            "second": {"trainer": {"type": "sft", "max_steps": 2, "per_device_train_batch_size": 8,
                                   "learning_rate": second_lr, "save_strategy": "no"}}}}
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return load_recipe(str(path))


def _weights(stage_dir):
    with open(os.path.join(stage_dir, "model", "model.safetensors"), "rb") as f:
        return f.read()


def _cached(summary):
    return {s["name"]: bool(s.get("stage_cache")) for s in summary["stages"]}


@pytest.mark.slow
def test_a_shared_stage_is_trained_once_and_a_changed_one_misses(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(stage_cache.ENV, str(cache))
    first = run(_recipe(tmp_path, "a"), get_registry())
    assert _cached(first) == {"first": False, "second": False}
    entries = [n for n in os.listdir(cache) if not n.endswith(".lock")]
    assert len(entries) == 2 and not any(".tmp-" in n for n in entries)

    # Same first stage, another second stage: the first is copied (its own model dir, the same weights), the
    # second trains.
    second = run(_recipe(tmp_path, "b", second_lr=3e-3), get_registry())
    assert _cached(second) == {"first": True, "second": False}
    b_first = tmp_path / "b" / "first"
    stage = json.loads((b_first / "stage.json").read_text())
    assert stage["info"]["model_dir"] == str(b_first / "model") and "stage_dir" not in stage
    assert _weights(b_first) == _weights(tmp_path / "a" / "first")
    assert _weights(tmp_path / "b" / "second") != _weights(tmp_path / "a" / "second")

    # A changed first stage changes the key of everything after it: both train.
    third = run(_recipe(tmp_path, "c", first_steps=3), get_registry())
    assert _cached(third) == {"first": False, "second": False}

    # --fresh trains every stage again (and finds the entries there already).
    fresh = run(_recipe(tmp_path, "a"), get_registry(), resume="never")
    assert _cached(fresh) == {"first": False, "second": False}

    # Without the variable nothing is read or written.
    monkeypatch.delenv(stage_cache.ENV)
    entries = sorted(os.listdir(cache))
    fourth = run(_recipe(tmp_path, "d"), get_registry())
    assert _cached(fourth) == {"first": False, "second": False} and sorted(os.listdir(cache)) == entries


def test_the_key_holds_what_decides_the_arithmetic(monkeypatch):
    import torch

    base = stage_cache.key("abc")
    assert stage_cache.key("abd") != base
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert stage_cache.key("abc") != base
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(stage_cache, "cpu_model", lambda: "another CPU")
    assert stage_cache.key("abc") != base
    monkeypatch.setattr(stage_cache, "_source_hash", lambda: "edited source")
    assert stage_cache.key("abc") != base


@pytest.mark.parametrize("world", ["1", "2"])
def test_multi_process_runs_do_not_use_it(monkeypatch, tmp_path, world):
    monkeypatch.setenv(stage_cache.ENV, str(tmp_path))
    monkeypatch.setenv("WORLD_SIZE", world)
    assert (stage_cache.cache_dir() is None) == (world == "2")


def test_a_second_claim_on_a_stage_waits_for_the_first(tmp_path):
    import threading
    import time
    from types import SimpleNamespace

    plan = SimpleNamespace(fingerprint="abc")
    acquired = []

    def second():
        with stage_cache.claim(plan, str(tmp_path)):
            acquired.append(time.monotonic())

    with stage_cache.claim(plan, str(tmp_path)):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)
        released = time.monotonic()
        assert not acquired  # still waiting
    thread.join(10)
    assert acquired and acquired[0] >= released
    with stage_cache.claim(SimpleNamespace(fingerprint="other"), str(tmp_path)):  # another stage: no wait
        pass


def test_paths_into_the_stored_stage_move_with_it():
    old, new = "/runs/a/sft", "/runs/b/sft"
    stored = {"info": {"model_dir": "/runs/a/sft/model", "curve": ["/runs/a/sft/reward_curve.png"],
                       "other": "/runs/a/sftx/model", "steps": 3}}
    assert stage_cache._moved(stored, old, new) == {"info": {
        "model_dir": "/runs/b/sft/model", "curve": ["/runs/b/sft/reward_curve.png"], "other": "/runs/a/sftx/model",
        "steps": 3}}


def test_a_stages_environment_and_tools_are_part_of_its_fingerprint():
    import dataclasses

    from rewardkit import run_state

    recipe = load_recipe(os.path.join(os.path.dirname(__file__), "..", "recipes", "quickstart.yaml"))
    spec = recipe.stages[1]
    base = run_state.fingerprint(run_state.stage_config(recipe, spec, None))
    env = dataclasses.replace(spec, environment={"name": "calculator", "params": {}})
    env2 = dataclasses.replace(spec, environment={"name": "calculator", "params": {"x": 1}})
    tools = dataclasses.replace(spec, tools=["mod:fn"])
    prints = {run_state.fingerprint(run_state.stage_config(recipe, s, None)) for s in (env, env2, tools)}
    assert len(prints | {base}) == 4


def test_an_early_stopped_stage_depends_on_what_its_criterion_scores_with_not_on_the_rest_of_eval():
    """SFT with early_stop scores its validation split greedily with eval's reward, generation length and batch:
    changing those retrains it; changing what only the reported evaluation uses (samples, n, pass@k) reuses it (a
    resumed run, or the stage cache)."""
    from rewardkit import run_state

    path = os.path.join(os.path.dirname(__file__), "..", "recipes", "quickstart.yaml")

    def sft_print(*overrides):
        recipe = load_recipe(path, list(overrides))
        return run_state.fingerprint(run_state.stage_config(recipe, recipe.stages[0], None))

    base = sft_print()
    assert sft_print("eval.samples=16", "eval.n=50", "eval.pass_k=[1]", "eval.temperature=0.7") == base
    assert sft_print("eval.max_new_tokens=6") != base and sft_print("eval.batch_size=10") != base
    assert sft_print("eval.reward={name: exact_match, params: {partial_credit: 0.5}}") != base


def test_an_early_stopped_stage_scored_on_episodes_depends_on_their_environment_and_tool_call_limit():
    """The tool recipe's SFT stops on episodes in the GRPO stage's calculator environment: changing that stage's
    tool-call limit or environment changes what the SFT trains."""
    from rewardkit import run_state

    path = os.path.join(os.path.dirname(__file__), "..", "recipes", "cpu", "tool_multiplication_grpo.yaml")

    def sft_print(*overrides):
        recipe = load_recipe(path, list(overrides))
        return run_state.fingerprint(run_state.stage_config(recipe, recipe.stages[0], None))

    assert load_recipe(path).stages[0].early_stop is not None
    base = sft_print()
    assert sft_print("stages.grpo.trainer.max_tool_calling_iterations=3") != base
    assert sft_print("eval.samples=2") == base
