"""benchmarks/rollout_efficiency.py: its statistics (levels, censoring, geometric mean, paired bootstrap) against
numbers worked by hand, its method names, its selection on tuning seeds and its summary of synthetic runs (the
benchmark itself is too long for the test suite; ``--smoke`` runs it end to end)."""

import importlib.util
import math
import os
import sys
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


st = _load("rollout_stats")
bench = _load("rollout_efficiency")
runs_mod = sys.modules["rollout_runs"]  # the module rollout_efficiency imported (its SFT cache, its runs)


def curve(points, key="greedy"):
    return [{"completions": c, key: v, "sampled": v, "entropy": 1.0, "train_seconds": c / 100} for c, v in points]


def test_levels_are_fractions_of_the_way_from_the_warm_start():
    assert st.levels(0.2, 0.6) == pytest.approx([0.3, 0.4, 0.5])
    with pytest.raises(ValueError, match="not above the warm start"):
        st.levels(0.5, 0.5)


def test_first_reach_interpolates_and_censoring_counts_the_budget():
    c = curve([(0, 0.1), (100, 0.3), (200, 0.5)])
    assert st.first_reach(c, 0.2, "greedy") == pytest.approx(50)
    assert st.first_reach(c, 0.4, "greedy") == pytest.approx(150)
    assert st.first_reach(c, 0.05, "greedy") == 0  # already there at the warm start
    assert st.first_reach(c, 0.4, "greedy", x="train_seconds") == pytest.approx(1.5)
    assert st.censored_cost(c, 0.45, "greedy", 300) == (pytest.approx(175), False)
    assert st.censored_cost(c, 0.9, "greedy", 300) == (300, True)  # never reached: the budget, a lower bound
    # a dip after crossing does not move the first crossing
    assert st.first_reach(curve([(0, 0.1), (100, 0.5), (200, 0.2), (300, 0.6)]), 0.3, "greedy") == pytest.approx(50)


def test_geometric_mean_and_paired_bootstrap_by_hand():
    assert st.geometric_mean([1.0, 4.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        st.geometric_mean([1.0, 0.0])
    # every seed's ratio is 0.5: estimate and every bootstrap resample are exactly 0.5
    assert st.paired_ratio([50, 100, 200], [100, 200, 400]) == pytest.approx((0.5, 0.5, 0.5))
    # ratios 0.25 and 1: geometric mean 0.5; resamples of 2 seeds give 0.25, 0.5 or 1 -> interval [0.25, 1]
    est, lo, hi = st.paired_ratio([25, 300], [100, 300], n_boot=2000)
    assert est == pytest.approx(0.5) and lo == pytest.approx(0.25) and hi == pytest.approx(1.0)
    with pytest.raises(ValueError, match="equal"):
        st.paired_ratio([1, 2], [1])


def test_pairing_matters_when_seeds_differ_in_difficulty():
    """Hard and easy seeds (costs 100 vs 1,000) with the method always 0.8× the baseline: the paired interval is
    the point 0.8; an unpaired comparison of the same numbers would be wide."""
    num, den = [80, 800, 80, 800], [100, 1000, 100, 1000]
    assert st.paired_ratio(num, den) == pytest.approx((0.8, 0.8, 0.8))


def test_auc_mean_ci_and_best_by():
    c = curve([(0, 0.0), (100, 1.0)])
    assert st.auc(c, 100, "greedy") == pytest.approx(0.5)
    assert st.auc(c, 200, "greedy") == pytest.approx(0.75)  # flat at the last value beyond the end
    assert st.mean_ci([0.5, 0.5, 0.5]) == pytest.approx((0.5, 0.5, 0.5))
    # one bootstrap: the paired interval is the mean interval of the log ratios, mapped back
    logs = [math.log(0.25), math.log(0.5), 0.0, math.log(2.0)]
    _, lo, hi = st.mean_ci(logs, n_boot=500, seed=3)
    assert st.paired_ratio([0.25, 0.5, 1.0, 2.0], [1.0] * 4, n_boot=500, seed=3)[1:] == pytest.approx(
        (math.exp(lo), math.exp(hi)))
    assert st.best_by({"a": 1.0, "b": 3.0, "c": 3.0}) == "b"  # ties: the first in order


def test_method_names():
    m = bench.parse_method("is4+noshuf+kl0.02+ess0.5+rp2+seq")
    assert (m["kind"], m["mu"], m["reshuffle"], m["early_stop_kl"], m["early_stop_ess"], m["replay_rollouts"],
            m["replay_is_level"]) == ("is", 4, False, 0.02, 0.5, 2, "sequence")
    assert bench.parse_method("trl_mu1")["mu"] == 1 and bench.parse_method("ctl8")["kind"] == "ctl"
    for bad in ("trl_mu2", "ctl4+kl0.1", "is4+foo", "ppo"):
        with pytest.raises(SystemExit):
            bench.parse_method(bad)
    a = types.SimpleNamespace(minibatches=8)
    assert [bench.steps_per_rollout(bench.parse_method(n), a) for n in ("trl_mu1", "trl_iters4", "ctl4", "is2+rp2")] \
        == [1, 32, 32, 48]


def test_arguments_refuse_overlapping_seeds_and_too_many_finalists():
    with pytest.raises(SystemExit):
        bench.parse(["--tuning-seeds", "0", "--eval-seeds", "0", "1"])
    with pytest.raises(SystemExit):
        bench.parse(["--finalists", "7"])
    a = bench.parse(["--quick"])
    assert a.budget == 6 and a.tasks == ["dense"] and not set(a.tuning_seeds) & set(a.eval_seeds)
    full = bench.parse([])
    assert len(full.eval_seeds) >= 10 and full.n_eval >= 1000 and full.tasks == ["dense", "sparse"]


def test_a_preset_fills_only_what_the_user_left_unset():
    """--quick's 32 prompts used to overwrite a user's --prompts 64 (equal to the argparse default)."""
    assert bench.parse(["--quick", "--prompts", "64"]).prompts == 64
    assert bench.parse(["--quick"]).prompts == 32 and bench.parse([]).prompts == 64
    assert bench.parse(["--smoke", "--length", "8", "--sft-steps", "150"]).length == 8
    assert bench.parse(["--smoke", "--sft-steps", "150"]).sft_steps == 150 and bench.parse(["--smoke"]).length == 3


def test_the_full_protocol_needs_ten_evaluation_seeds(capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse(["--eval-seeds"] + [str(s) for s in range(9)])
    assert e.value.code == 2 and "at least 10" in capsys.readouterr().err
    assert len(bench.parse(["--quick", "--eval-seeds", "0", "1"]).eval_seeds) == 2  # allowed, and labelled:
    lines = bench.report({"tasks": {}, "timing": {}, "cpu_hours": 0.0, "wall_hours": 0.0},
                         types.SimpleNamespace(tuning_seeds=[9], eval_seeds=[0, 1], jobs=1))
    assert any(x.startswith("NOT THE PROTOCOL: 2 evaluation seeds") for x in lines)
    full = bench.report({"tasks": {}, "timing": {}, "cpu_hours": 0.0, "wall_hours": 0.0},
                        types.SimpleNamespace(tuning_seeds=[9], eval_seeds=list(range(10)), jobs=1))
    assert not any("NOT THE PROTOCOL" in x for x in full)


def test_resuming_with_other_settings_is_refused(tmp_path, capsys):
    a = bench.parse(["--smoke", "--out", str(tmp_path)])
    bench.check_resume(a)  # nothing there yet
    bench._save_plan(a, {}, 0.0)
    bench.check_resume(bench.parse(["--smoke", "--out", str(tmp_path), "--jobs", "2"]))  # --jobs changes no result
    with pytest.raises(SystemExit) as e:
        bench.check_resume(bench.parse(["--smoke", "--out", str(tmp_path), "--prompts", "8"]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "prompts: 4 there, 8 now" in err and "rollout: 16 there, 32 now" in err


def _job(i):
    return {"stage": "grid", "task": "dense", "method": "trl_mu1", "lr": 1e-3, "seed": i}


def _worker(job):
    """Seed 0 is slow, seed 1 crashes, seed 2 is quick (a module-level function: the pool pickles it)."""
    import time

    time.sleep({0: 3.0, 1: 0.2, 2: 0.0}[job["seed"]])
    if job["seed"] == 1:
        raise RuntimeError("out of memory")
    return {k: job[k] for k in ("stage", "task", "method", "lr", "seed")} | {
        "curve": [{"greedy": 0.0, "sampled": 0.0, "entropy": 0.0}], "train_seconds": 0.0, "steps": 0}


@pytest.mark.parametrize("jobs", [1, 2])
def test_each_result_is_saved_as_it_ends_and_a_crash_is_recorded(tmp_path, jobs):
    """The crashed run is in results.jsonl as failed with its error, every other run is saved too (with --jobs 2
    in the order they end), the protocol stops after the stage, and a rerun retries only the failed run."""
    import json

    a = types.SimpleNamespace(jobs=jobs, out=str(tmp_path))
    with pytest.raises(SystemExit, match="1 of 3 runs failed.*RuntimeError: out of memory"):
        bench.execute([_job(0), _job(1), _job(2)], a, [], {}, worker=_worker)
    saved = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    # two workers: seed 0 (submitted first, slow) is saved last, after the crash and the run that replaced it
    assert [r["seed"] for r in saved] == ([1, 2, 0] if jobs > 1 else [0, 1, 2])
    assert saved[[r["seed"] for r in saved].index(1)]["error"] == "RuntimeError: out of memory"
    done = bench.load_runs(str(tmp_path))
    assert sorted(r["seed"] for r in done) == [0, 2]
    seen = []
    bench.execute([_job(0), _job(1), _job(2)], types.SimpleNamespace(jobs=1, out=str(tmp_path)), done, {},
                  worker=lambda j: seen.append(j["seed"]) or _worker({**j, "seed": 2}) | {"seed": j["seed"]})
    assert seen == [1]


def test_the_warm_start_is_cached_atomically_under_the_stage_cache_key(tmp_path, monkeypatch):
    """Keyed like rewardkit's stages (a thread count or a setting changes the key), trained into a temporary
    directory renamed when complete: a crash leaves no entry, a finished one is reused without training."""
    import torch

    monkeypatch.setenv("REWARDKIT_STAGE_CACHE", str(tmp_path))
    a = bench.parse(["--smoke"])
    trained = []

    def fake_train(args, out):
        trained.append(out)
        os.makedirs(out)
        if len(trained) == 1:
            raise RuntimeError("killed")
        open(os.path.join(out, "config.json"), "w").close()

    monkeypatch.setattr(runs_mod, "train_sft", fake_train)
    with pytest.raises(RuntimeError):
        runs_mod.sft_model(a)
    assert [p for p in os.listdir(tmp_path) if not p.endswith(".lock")] == []  # no half entry
    path = runs_mod.sft_model(a)
    assert os.path.dirname(path) == str(tmp_path) and os.path.exists(os.path.join(path, "config.json"))
    assert runs_mod.sft_model(a) == path and len(trained) == 2 and ".tmp-" in trained[1]
    other = types.SimpleNamespace(**{**vars(a), "sft_steps": a.sft_steps + 1})
    assert runs_mod.warm_start_entry(other, str(tmp_path)) != path
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert runs_mod.warm_start_entry(a, str(tmp_path)) != path
    finally:
        torch.set_num_threads(threads)


def _run(stage, method, lr, seed, points, task="dense"):
    return {"stage": stage, "task": task, "method": method, "lr": lr, "seed": seed, "curve": curve(points),
            "completions": points[-1][0], "train_seconds": points[-1][0] / 100, "mean_epochs_used": None}


def test_selection_uses_tuning_runs_and_summary_pairs_seeds():
    """Tuning: is4 beats trl_iters4 at lr 1e-3 only; the levels are 0 + (25/50/75% of 0.8). Evaluation (2 seeds):
    is4 reaches the 50% level (0.4) at 100 and 200 completions, trl_iters4 at 200 and never (budget 400, censored):
    ratios 0.5 and 0.5, geometric mean 0.5, one censored comparator seed."""
    a = types.SimpleNamespace(budget=4, rollout=100, finalists=6, tuning_seeds=[9], jobs=1)
    runs = [_run("grid", "trl_mu1", 1e-3, 9, [(0, 0.0), (400, 0.3)]),
            _run("grid", "trl_iters4", 1e-3, 9, [(0, 0.0), (400, 0.5)]),
            _run("grid", "ctl4", 1e-3, 9, [(0, 0.0), (400, 0.4)]),
            _run("grid", "is4", 1e-3, 9, [(0, 0.0), (400, 0.8)]),
            _run("grid", "is4", 3e-4, 9, [(0, 0.0), (400, 0.2)])]
    sel = bench.select(bench.tuning_scores(runs, "dense", a), a)
    assert sel["best_lr"]["is4"] == 1e-3 and sel["best_is"] == "is4" and sel["best_trl"] == "trl_iters4"
    assert sel["best_ctl"] == "ctl4" and bench.eval_methods(sel) == ["trl_mu1", "trl_iters4", "ctl4", "is4"]
    sel["levels"] = st.levels(0.0, max(bench.final_score(runs, "dense", m, sel["best_lr"][m]) for m in sel["best_lr"]))
    assert sel["levels"] == pytest.approx([0.2, 0.4, 0.6])
    runs += [_run("eval", "is4", 1e-3, 0, [(0, 0.0), (100, 0.4), (400, 0.8)]),
             _run("eval", "is4", 1e-3, 1, [(0, 0.0), (200, 0.4), (400, 0.6)]),
             _run("eval", "trl_iters4", 1e-3, 0, [(0, 0.0), (200, 0.4), (400, 0.4)]),
             _run("eval", "trl_iters4", 1e-3, 1, [(0, 0.0), (400, 0.3)])]
    out = bench.summarize_task(runs, "dense", sel, a)
    mid = out["ratios"]["is4 / trl_iters4"][1]
    assert mid["ratio"] == pytest.approx(0.5) and mid["den_censored"] == 1 and mid["num_censored"] == 0
    assert out["rows"]["is4"]["greedy@1"][0] == pytest.approx(0.7)
    summary = {"tasks": {"dense": {"selection": {**sel, "start": 0.0, "best_final": 0.8}, **out}}, "timing": {},
               "cpu_hours": 0.1, "wall_hours": 0.05}
    lines = bench.report(summary, types.SimpleNamespace(tuning_seeds=[9], jobs=1))
    assert lines[-1].startswith("HEADLINE")  # the headline is last
    assert any(x.startswith("HEADLINE [dense] is4 vs trl_iters4: completions to the 50% level 0.50×") for x in lines)
    assert math.isclose(summary["cpu_hours"], 0.1)


@pytest.mark.slow
@pytest.mark.parametrize("method, steps", [("trl_mu1", 2), ("ctl2", 8), ("is2+rp1", 12)])
def test_a_run_stops_at_the_budget_without_an_extra_rollout(registry, tmp_path, method, steps):
    """Budget 2 rollouts of 4 × 4 in 2 minibatches: exactly 32 completions are generated (none past the budget),
    every planned optimizer step on them is taken (μ=1: 1 per rollout; ctl2: 4; is2 with one replayed rollout:
    4 + 8), and the last evaluation is at the budget."""
    import torch

    from rewardkit import models

    torch.set_num_threads(1)
    a = bench.parse(["--smoke", "--out", str(tmp_path)])
    a.budget, a.n_eval = 2, 8
    path = models.resolve("tiny-llama", registry)
    data = bench.task_data(a.length, a.n_eval)
    start = {"greedy": 0.0, "sampled": 0.0, "letters": 0.0, "entropy": 0.0}
    r = bench.run_one({"stage": "eval", "task": "dense", "method": method, "lr": 1e-3, "seed": 0}, a, path, data, start)
    assert r["completions"] == 2 * a.rollout == 32
    assert r["steps"] == steps
    assert r["curve"][-1]["completions"] == 32 and r["curve"][-1]["steps"] == steps
