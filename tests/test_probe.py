"""``rewardkit probe``: leaky rewards are flagged, honest ones are not, None is not 0, exit codes."""

from __future__ import annotations

import json
import os
import re

import pytest

from rewardkit import cli, probe
from rewardkit.recipe import load_recipe
from rewardkit import completion_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RECIPE = """\
output_dir: {out}
model: {{name: tiny-llama}}
data: {{name: arithmetic, params: {{n_train: 200, n_test: 20}}}}
trainer: {{type: grpo, max_steps: 1}}
rewards:
{rewards}
"""


def leaky(prompts, completions, answer, **kwargs):
    """Deliberately leaky: the gold anywhere in the text counts."""
    return [1.0 if str(a) in completion_text(c) else 0.0 for c, a in zip(completions, answer)]


def lenient_boxed(prompts, completions, answer, **kwargs):
    """Format-only hole: pays for a \\boxed{} unless what is inside contradicts the gold; an empty box passes."""
    out = []
    for c, a in zip(completions, answer):
        m = re.search(r"\\boxed\{([^}]*)\}", completion_text(c))
        out.append(0.0 if m is None or (m.group(1).strip() and m.group(1).strip() != str(a)) else 1.0)
    return out


def unsure(prompts, completions, answer, **kwargs):
    """Honest, but says 'could not judge' (None) for completions that are blank."""
    return [None if not completion_text(c).strip() else float(completion_text(c).strip() == str(a))
            for c, a in zip(completions, answer)]


def utf8_only(prompts, completions, answer, **kwargs):
    """Honest, but crashes on text that is not valid UTF-8 (a lone surrogate)."""
    return [float(completion_text(c).encode("utf-8").strip() == str(a).encode()) for c, a in zip(completions, answer)]


@pytest.fixture
def registry(builtin_registry):
    for name, fn in (("test.leaky", leaky), ("test.lenient_boxed", lenient_boxed), ("test.unsure", unsure),
                     ("test.utf8_only", utf8_only)):
        builtin_registry.add("rewards", name, fn)
    return builtin_registry


def write(tmp_path, *rewards):
    path = tmp_path / "recipe.yaml"
    blocks = "\n".join(f"  - {{name: {r}}}" for r in rewards)
    path.write_text(RECIPE.format(out=tmp_path / "run", rewards=blocks))
    return str(path)


def by_reward(reports):
    return {rep.reward: {r.probe: r for r in rep.results} for rep in reports}


def test_verdict_rule_worked_by_hand():
    assert probe.is_exploit(0.5, 1.0, 0.0)  # half the gold, above wrong
    assert not probe.is_exploit(0.49, 1.0, 0.0)
    assert not probe.is_exploit(0.6, 1.0, 0.6)  # no better than a wrong answer
    assert probe.is_exploit(-0.1, -0.2, -0.8)  # negative rewards: -0.1 >= -0.1, > -0.8
    assert not probe.is_exploit(None, 1.0, 0.0) and not probe.is_exploit(1.0, None, 0.0)
    assert probe.is_exploit(1.0, 1.0, None)  # wrong unjudged: only the gold half counts


def test_leaky_and_format_only_rewards_are_flagged_honest_one_is_not(registry, tmp_path):
    recipe = load_recipe(write(tmp_path, "test.leaky", "test.lenient_boxed", "exact_match"), registry=registry)
    reports = probe.probe_recipe(recipe, registry, rows=16)
    res = by_reward(reports)
    assert res["test.leaky"]["gold"].score == 1.0 and res["test.leaky"]["wrong"].score == 0.0
    flagged = {p for p, r in res["test.leaky"].items() if r.exploit}
    assert {"spray all golds", "gold + contradictions", "several boxed", "several tags"} <= flagged
    assert "empty" not in flagged and "wrong" not in flagged
    assert res["test.lenient_boxed"]["gold"].score == 1.0  # found the boxed format by itself
    assert {p for p, r in res["test.lenient_boxed"].items() if r.exploit} >= {"empty boxed", "format only"}
    assert not [r for r in res["exact_match"].values() if r.exploit]
    assert res["exact_match"]["1 MB of numbers"].n == probe.BIG_ROWS


def test_none_is_reported_as_could_not_judge_not_zero(registry, tmp_path):
    recipe = load_recipe(write(tmp_path, "test.unsure"), registry=registry)
    (rep,) = probe.probe_recipe(recipe, registry, rows=8)
    empty = {r.probe: r for r in rep.results}["empty"]
    assert empty.score is None and empty.judged == 0 and not empty.exploit
    assert "could not judge (8/8 None)" in probe.format_reports([rep])


def test_cli_exit_codes_and_json(registry, tmp_path, capsys):
    assert cli.main(["probe", write(tmp_path, "test.leaky"), "--json", "--rows", "8"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert set(rows[0]) == {"stage", "reward", "probe", "score", "gold_score", "exploit"}
    assert any(r["exploit"] and r["probe"] == "spray all golds" for r in rows)
    assert cli.main(["probe", write(tmp_path, "exact_match"), "--rows", "8"]) == 0
    assert "no exploit found" in capsys.readouterr().out
    assert cli.main(["probe", write(tmp_path, "exact_match"), "trainer.max_stepz=3"]) == 2
    assert "max_stepz" in capsys.readouterr().err


def test_reward_declared_probes_are_scored(registry, tmp_path):
    class Declares:
        def __call__(self, prompts, completions, answer, **kwargs):
            return [1.0 if completion_text(c) in (str(a), "MAGIC") else 0.0 for c, a in zip(completions, answer)]

        def probe_completions(self, rows):
            return {"magic word": ["MAGIC"] * len(rows)}

    registry.add("rewards", "test.declares", Declares)
    recipe = load_recipe(write(tmp_path, "test.declares"), registry=registry)
    (rep,) = probe.probe_recipe(recipe, registry, rows=8)
    assert {r.probe: r for r in rep.results}["magic word (declared)"].exploit


def test_math_and_code_rewards_of_the_bundled_recipes_are_not_flagged(fresh_registry, tmp_path):
    """The first-party plugins' rewards, registered here explicitly, on their own bundled datasets."""
    math_plugin = pytest.importorskip("rewardkit_math.plugin")
    from rewardkit import builtin  # noqa: PLC0415

    fresh_registry.add_plugin(builtin, "builtin", dist="rewardkit")
    fresh_registry.add_plugin(math_plugin, "math", dist="rewardkit-math")
    path = tmp_path / "math.yaml"
    path.write_text(RECIPE.format(out=tmp_path / "run", rewards="  - {name: math.accuracy, params: {gold_column: "
                                  "answer, extract: [hash, boxed]}}\n  - {name: math.format}")
                    .replace("{name: arithmetic, params: {n_train: 200, n_test: 20}}",
                             "{name: math.word_problems, prompt_template: '{question}'}"))
    reports = probe.probe_recipe(load_recipe(str(path), registry=fresh_registry), fresh_registry, rows=16)
    res = by_reward(reports)
    assert res["math.accuracy"]["gold"].score == 1.0 and res["math.accuracy"]["wrong"].score == 0.0
    assert not [r.probe for rep in reports for r in rep.exploits]
    assert [rep.blind for rep in reports] == [False, True]  # math.format does not judge correctness


def test_a_reward_that_raises_on_a_probe_is_reported_not_flagged(registry, tmp_path):
    recipe = load_recipe(write(tmp_path, "test.utf8_only"), registry=registry)
    (rep,) = probe.probe_recipe(recipe, registry, rows=8)
    res = {r.probe: r for r in rep.results}
    assert res["gold"].score == 1.0 and "UnicodeEncodeError" in res["control chars"].error
    assert not res["control chars"].exploit and "RAISED: RewardError" in probe.format_reports([rep])


def test_code_reward_of_the_bundled_recipe_is_not_flagged(fresh_registry):
    code_plugin = pytest.importorskip("rewardkit_code.plugin")
    from rewardkit_code.sandbox import host_problems  # noqa: PLC0415

    if host_problems("full"):
        pytest.skip("SANDBOX UNAVAILABLE: " + "; ".join(host_problems("full")))
    from rewardkit import builtin  # noqa: PLC0415

    fresh_registry.add_plugin(builtin, "builtin", dist="rewardkit")
    fresh_registry.add_plugin(code_plugin, "code", dist="rewardkit-code")
    recipe = load_recipe(os.path.join(REPO, "recipes", "cpu", "code_grpo.yaml"), registry=fresh_registry)
    (rep,) = probe.probe_recipe(recipe, fresh_registry, rows=8)
    res = {r.probe: r for r in rep.results}
    assert rep.gold_format == "declared by the reward" and res["gold"].score == 1.0
    assert {"exit 0 early (declared)", "success markers (declared)", "always-equal object (declared)"} <= set(res)
    assert not rep.exploits and all(r.error is None for r in rep.results)
