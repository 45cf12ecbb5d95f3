"""benchmarks/rollout_efficiency.py: the curve arithmetic and the summary it prints from finished runs
(synthetic curves with known answers; the benchmark itself is too long for the test suite)."""

import importlib.util
import os
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("rollout_efficiency",
                                              os.path.join(REPO, "benchmarks", "rollout_efficiency.py"))
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def curve(points):
    """(completions, accuracy, train_seconds, gen_seconds) -> a run's curve."""
    return [{"completions": c, "accuracy": acc, "exact": 0.0, "letters": acc, "train_seconds": t, "gen_seconds": g}
            for c, acc, t, g in points]


def test_auc_reach_and_interpolation():
    line = curve([(0, 0.0, 0, 0), (100, 1.0, 10, 5)])
    assert bench.auc(line, 100) == pytest.approx(0.5)
    assert bench.at(line, 25) == pytest.approx(0.25)
    assert bench.reach(line, 0.4, "completions") == pytest.approx(40)
    assert bench.reach(line, 0.4, "train_seconds") == pytest.approx(4)
    assert bench.reach(line, 1.5, "completions") is None
    assert bench.parse_method("is4+ds") == ("is", 4, True) and bench.parse_method("trl_mu1") == ("trl", 1, False)
    m, half = bench.ci([1.0, 2.0, 3.0])
    assert m == 2.0 and half == pytest.approx(4.30 * 1.0 / 3 ** 0.5)


def test_summary_ratios_and_the_labelled_projection():
    """μ=1 ends at 0.6 after 1,000 completions; is4 gets there at 500 but trains 4× as long per completion.
    Measured: is4 needs 0.5× the completions and 2× the seconds of μ=1 to reach 0.6. Projected with μ=1's
    generation scaled to 80% of its time (k = 0.8·5 / (0.2·5) = 4), is4's 500 completions cost 4·2.5 + 17.5."""
    def run(method, points):
        return {"method": method, "lr": 1e-4, "seed": 0, "curve": curve(points), "completions": points[-1][0],
                "train_seconds": points[-1][2], "generation_seconds": points[-1][3]}

    runs = [run("trl_mu1", [(0, 0.5, 0, 0), (1000, 0.6, 10, 5)]),
            run("is4", [(0, 0.5, 0, 0), (500, 0.6, 20, 2.5), (1000, 0.7, 40, 5)])]
    a = types.SimpleNamespace(budget=1000, seeds=[0], metric="letters", n_eval=300, eval_samples=4)
    s = bench.summarize(runs, a)
    assert s["equal_accuracy_level"] == pytest.approx(0.6) and s["projection_factor"] == pytest.approx(4.0)
    is4 = s["methods"]["is4"]
    assert is4["completions_ratio_vs_mu1"] == pytest.approx(0.5)
    assert is4["seconds_ratio_vs_mu1"] == pytest.approx(2.0)
    # μ=1: 5 s of other work + 4·5 s of generation = 25; is4 at 0.6: 17.5 + 4·2.5 = 27.5
    assert is4["projected_seconds_ratio_vs_mu1"] == pytest.approx(27.5 / 25)
    lines = bench.report(s, a)
    assert lines[-1].startswith("HEADLINE is4: completions 0.50× μ=1; wall-clock 2.00× μ=1 measured, 1.10× projected")
