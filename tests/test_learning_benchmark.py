"""benchmarks/learning.py: seed ranges, error reduction, and the table it prints from finished runs."""

import importlib.util
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("learning", os.path.join(REPO, "benchmarks", "learning.py"))
learning = importlib.util.module_from_spec(spec)
spec.loader.exec_module(learning)


def test_seed_ranges_and_error_reduction():
    assert learning.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert learning.parse_seeds("0,3,7-8") == [0, 3, 7, 8]
    assert abs(learning.error_reduction(0.8, 0.9) - 0.5) < 1e-12
    assert learning.error_reduction(0.8, 0.7) < 0  # worse than the warm start
    assert abs(learning.stderr(0.7, 300) - 0.02646) < 1e-4


def fake_run(path, seed, sft, rl, sampled=(0.5, 0.6), pref=None):
    os.makedirs(path)
    ev = [{"after": "base", "score": 0.0, "n": 300, "sampled_score": 0.0},
          {"after": "sft", "score": sft, "n": 300, "sampled_score": sampled[0]},
          {"after": "dpo", "score": rl, "n": 300, "sampled_score": sampled[1]}]
    stages = [{"name": "sft"}, {"name": "dpo", **({"heldout_preference_accuracy": pref} if pref else {})}]
    with open(os.path.join(path, "summary.json"), "w") as f:
        json.dump({"complete": True, "seconds": 100 + seed, "eval": ev, "stages": stages}, f)


def test_reuse_tabulates_median_and_worst_seed(tmp_path, capsys):
    fake_run(tmp_path / "seed0", 0, 0.8, 0.9, pref=0.95)
    fake_run(tmp_path / "seed1", 1, 0.6, 0.9, pref=0.91)
    fake_run(tmp_path / "seed2", 2, 0.7, 0.85, sampled=(0.6, 0.55), pref=0.93)
    assert learning.main(["recipes/cpu/arithmetic_dpo.yaml", "--reuse", "--out", str(tmp_path), "--seeds", "0-2"]) == 0
    out = capsys.readouterr().out
    assert "last stage's error reduction: median 50.0%, worst 50.0%" in out
    assert "dpo preference_accuracy: median 93.0%, worst 91.0%" in out
    assert "sampled accuracy fell in the last stage for seeds: [2]" in out
    assert learning.main(["recipes/cpu/arithmetic_dpo.yaml", "--reuse", "--out", str(tmp_path), "--seeds", "3"]) == 1


def test_worst_seed_is_the_one_that_lost_accuracy_from_a_perfect_warm_start(tmp_path, capsys):
    """A warm start at 100% has no error to reduce (error reduction NaN): such a seed is ranked by its accuracy
    change, so the one seed that lost accuracy is the worst, and the median runs over the defined reductions."""
    fake_run(tmp_path / "seed0", 0, 1.0, 1.0)
    fake_run(tmp_path / "seed1", 1, 0.8, 0.9)
    fake_run(tmp_path / "seed2", 2, 1.0, 0.99)
    fake_run(tmp_path / "seed3", 3, 0.6, 0.9)
    assert learning.main(["recipes/cpu/arithmetic_dpo.yaml", "--reuse", "--out", str(tmp_path), "--seeds", "0-3"]) == 0
    out = capsys.readouterr().out
    assert "median 62.5%, worst n/a (seed 2, accuracy change -1.0 points)" in out
    assert "warm start at 100%" in out and "seeds: [0, 2]" in out
    worst_line = next(line for line in out.splitlines() if line.lstrip().startswith("worst"))
    assert worst_line.endswith("(seed 2)")
