"""``rewardkit probe``: leaky rewards are flagged, honest ones are not, None is not 0, exit codes; a reward blind
to correctness and one that breaks the reward contract are findings; the shipped recipes raise no false alarm."""

from __future__ import annotations

import glob
import json
import os
import random
import re

import pytest
import yaml

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


def _hit(c, a) -> float:
    return float(completion_text(c).strip() == str(a))


def number_anywhere(prompts, completions, answer, **kwargs):
    """Ignores the gold: any number earns 1.0, so a wrong answer scores as the gold (no probe beats it)."""
    return [float(completion_text(c).strip().isdigit()) for c in completions]


def batch_centred(prompts, completions, answer, **kwargs):
    """Depends on the batch split: exact match minus the batch's mean exact match (order does not matter)."""
    hits = [_hit(c, a) for c, a in zip(completions, answer)]
    return [h - sum(hits) / len(hits) for h in hits]


def first_half_paid(prompts, completions, answer, **kwargs):
    """Depends on the order of the batch: exact match, paid in full only in the batch's first half."""
    n = len(completions)
    return [_hit(c, a) * (1.0 if k < n / 2 else 0.5) for k, (c, a) in enumerate(zip(completions, answer))]


def noisy(prompts, completions, answer, **kwargs):
    """Not a function of its inputs: exact match plus noise."""
    return [_hit(c, a) + random.random() / 10 for c, a in zip(completions, answer)]


def salted(prompts, completions, answer, **kwargs):
    """The same within a process, not across processes: a bonus from Python's salted ``str`` hash."""
    return [_hit(c, a) + hash(completion_text(c)) % 1000 / 1e4 for c, a in zip(completions, answer)]


def from_prompt(prompts, completions, answer, **kwargs):
    """Declares the gold column (a required parameter) but works the sum out of the prompt: ignores the gold."""
    return [float(completion_text(c).strip() == str(sum(map(int, re.findall(r"\d+", p)))))
            for p, c in zip(prompts, completions)]


def answer_tagged(prompts, completions, **kwargs):
    """Format only, honest: 1.0 for one non-empty ``<answer>...</answer>``."""
    return [float(bool(re.fullmatch(r"\s*<answer>[^<]*\S[^<]*</answer>\s*", completion_text(c))))
            for c in completions]


def any_answer_tag(prompts, completions, **kwargs):
    """Format only, with a hole: the tag pays even with nothing inside."""
    return [float("<answer>" in completion_text(c)) for c in completions]


answer_tagged.judges_only = any_answer_tag.judges_only = "format"


class NoneEveryOtherCall:
    """Blank completions: "could not judge" (None) on odd calls, 0.0 on even ones; the means never see it."""

    def __init__(self):
        self.calls = 0

    def __call__(self, prompts, completions, answer, **kwargs):
        self.calls += 1
        return [None if not completion_text(c).strip() and self.calls % 2 else _hit(c, a)
                for c, a in zip(completions, answer)]


BAD_REWARDS = {"test.number_anywhere": number_anywhere, "test.batch_centred": batch_centred,
               "test.first_half_paid": first_half_paid, "test.noisy": noisy, "test.salted": salted,
               "test.from_prompt": from_prompt, "test.answer_tagged": answer_tagged,
               "test.any_answer_tag": any_answer_tag, "test.none_every_other_call": NoneEveryOtherCall}


@pytest.fixture
def registry(builtin_registry):
    for name, fn in (("test.leaky", leaky), ("test.lenient_boxed", lenient_boxed), ("test.unsure", unsure),
                     ("test.utf8_only", utf8_only), *BAD_REWARDS.items()):
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
    assert probe.is_exploit(-0.15, -0.2, -0.8)  # a penalty scale: as much as the gold's -0.2 is enough
    assert not probe.is_exploit(-0.25, -0.2, -0.8)
    assert probe.earns_gold(0.0, 0.0) and not probe.earns_gold(-1.0, 0.0)  # gold 0 (a length penalty's best)


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
    assert set(rows[0]) == {"stage", "reward", "probe", "score", "gold_score", "exploit", "finding"}
    spray = next(r for r in rows if r["probe"] == "spray all golds")
    assert spray["exploit"] and "more than a wrong answer" in spray["finding"]
    checks = {r["probe"]: r for r in rows if r["probe"].startswith("check: ")}
    assert set(checks) == {"check: judges correctness", "check: repeated call", "check: batch split",
                           "check: batch order", "check: fresh process", "check: shuffled golds"}
    assert not any(r["exploit"] or r["finding"] for r in checks.values())  # leaky, not blind or unstable
    assert cli.main(["probe", write(tmp_path, "exact_match"), "--rows", "8"]) == 0
    assert "no exploit found" in capsys.readouterr().out
    assert cli.main(["probe", write(tmp_path, "exact_match"), "trainer.max_stepz=3"]) == 2
    assert "max_stepz" in capsys.readouterr().err


class Declares:
    """A reward that declares its own probe (a magic word it wrongly accepts)."""

    def __call__(self, prompts, completions, answer, **kwargs):
        return [1.0 if completion_text(c) in (str(a), "MAGIC") else 0.0 for c, a in zip(completions, answer)]

    def probe_completions(self, rows):
        return {"magic word": ["MAGIC"] * len(rows)}


def test_reward_declared_probes_are_scored(registry, tmp_path):
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


# --------------------------------------------------------------------------- blind rewards and the reward contract
def checks_of(rep) -> dict:
    """check name -> its row, for one reward's report."""
    return {r.probe[len(probe.CHECK):]: r for r in rep.results if r.probe.startswith(probe.CHECK)}


def findings_of(rep) -> set[str]:
    return {r.probe for r in rep.findings}


def test_a_reward_that_ignores_the_gold_is_a_finding_in_json_and_exit_status(registry, tmp_path, capsys):
    """The old rule alone flags nothing here: no probe beats a wrong answer, which scores as the gold."""
    assert cli.main(["probe", write(tmp_path, "test.number_anywhere"), "--json", "--rows", "8"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert {r["probe"] for r in rows if r["exploit"]} == {"check: judges correctness"}
    (blind,) = [r for r in rows if r["exploit"]]
    assert blind["score"] == blind["gold_score"] == 1.0 and "does not judge correctness" in blind["finding"]


@pytest.mark.parametrize("reward, check, words", [
    ("test.batch_centred", "batch split", "depends on how the batch is split"),
    ("test.first_half_paid", "batch order", "depends on the order of the batch"),
    ("test.noisy", "repeated call", "not deterministic"),
    ("test.salted", "fresh process", "scores differently in a new interpreter"),
    ("test.from_prompt", "shuffled golds", "ignores the gold it reads"),
])
def test_a_reward_that_breaks_the_contract_is_flagged_by_that_check(registry, tmp_path, reward, check, words):
    (rep,) = probe.probe_recipe(load_recipe(write(tmp_path, reward), registry=registry), registry, rows=8)
    checks = checks_of(rep)
    assert checks[check].exploit and words in checks[check].detail, probe.format_reports([rep])
    assert checks["judges correctness"].detail is None  # each of them does tell a right answer from a wrong one
    assert not [r for r in rep.results if r.exploit and not r.probe.startswith(probe.CHECK)]  # no probe exploits


def test_contract_checks_pass_an_honest_reward_and_name_the_root_cause_of_a_broken_one(registry, tmp_path):
    recipe = load_recipe(write(tmp_path, "exact_match", "test.noisy", "test.batch_centred"), registry=registry)
    honest, noisy_, centred = probe.probe_recipe(recipe, registry, rows=8)
    assert all(not r.exploit and r.detail is None for r in checks_of(honest).values())  # compared, all ok
    noisy_checks = checks_of(noisy_)
    assert {n for n, r in noisy_checks.items() if r.exploit} == {"repeated call"}
    assert all("a repeated call already scores differently" in noisy_checks[n].detail
               for n in ("batch split", "batch order", "fresh process"))
    centred_checks = checks_of(centred)
    assert {n for n, r in centred_checks.items() if r.exploit} == {"batch split"}
    assert "already depend on the batch" in centred_checks["fresh process"].detail


def test_none_where_a_number_was_is_a_difference_not_a_zero(registry, tmp_path):
    (rep,) = probe.probe_recipe(load_recipe(write(tmp_path, "test.none_every_other_call"), registry=registry),
                                registry, rows=8)
    repeated = checks_of(rep)["repeated call"]
    assert repeated.exploit and re.search(r"row \d+ empty, (None then 0|0 then None)", repeated.detail)


def test_a_declared_format_reward_is_judged_by_its_own_rule_not_for_blindness(registry, tmp_path):
    recipe = load_recipe(write(tmp_path, "test.answer_tagged", "test.any_answer_tag"), registry=registry)
    honest, holed = probe.probe_recipe(recipe, registry, rows=8)
    for rep in (honest, holed):
        assert rep.judges == "format" and rep.blind  # a wrong answer scores as the gold, as it should here
        assert "not required: declared judges_only = 'format'" in checks_of(rep)["judges correctness"].detail
    assert not honest.findings, probe.format_reports([honest])
    assert findings_of(holed) == {"format only", "empty tags"}  # its tag pays with nothing inside
    assert "EXPLOIT: a format reward pays a completion without content" in probe.format_reports([holed])


def test_the_same_format_reward_undeclared_is_blind(registry, tmp_path, monkeypatch):
    monkeypatch.delattr(answer_tagged, "judges_only")
    (rep,) = probe.probe_recipe(load_recipe(write(tmp_path, "test.answer_tagged"), registry=registry), registry,
                                rows=8)
    assert findings_of(rep) == {"check: judges correctness"}


def test_an_unknown_judges_only_value_is_a_clear_error(registry, tmp_path, capsys):
    def styled(prompts, completions, **kwargs):
        return [1.0 for _ in completions]

    styled.judges_only = "style"
    registry.add("rewards", "test.styled", styled)
    assert cli.main(["probe", write(tmp_path, "test.styled"), "--rows", "4"]) == 2
    err = capsys.readouterr().err
    assert "judges_only = 'style'" in err and "'format', 'length'" in err and "Traceback" not in err


# --------------------------------------------------------------------------- no false alarm on what ships
def stand_in_data(path: str) -> list[str]:
    """Overrides that give a hub dataset the smoke run's bundled rows in its format (no hub here)."""
    from rewardkit.smoke import STAND_IN_DATA  # noqa: PLC0415

    with open(path) as f:
        raw = yaml.safe_load(f)
    sections = [("data", raw.get("data"))] + [(f"stages.{name}.data", stage.get("data"))
                                              for name, stage in (raw.get("stages") or {}).items()]
    return [o for where, data in sections if isinstance(data, dict) and data.get("hub")
            for o in [f"{where}.path={STAND_IN_DATA[data['hub']]}"]
            + [f"~{where}.{k}" for k in ("hub", "config", "split", "test_split") if k in data]
            + ([f"{where}.test_size=8"] if data.get("test_split") else [])]


# Every recipe in recipes/, then the shipped rewards and params no recipe uses, on the math recipe's rows.
SHIPPED = [(os.path.relpath(p, REPO), []) for p in sorted(glob.glob(os.path.join(REPO, "recipes", "**", "*.yaml"),
                                                                   recursive=True))]
SHIPPED.append(("recipes/cpu/math_grpo.yaml", [
    "stages.grpo.rewards=[{name: math.format}, {name: exact_match, params: {partial_credit: 0.5}}, "
    "{name: math.accuracy, alias: all, params: {multiple: all}}, "
    "{name: math.accuracy, alias: last, params: {extract: [last_number]}}, "
    "{name: math.length_penalty, params: {max_length: 64, cache_length: 16}}]"]))


@pytest.fixture
def shipped_registry(fresh_registry):
    """rewardkit's built-ins and its first-party plugins, registered explicitly."""
    from rewardkit import builtin  # noqa: PLC0415

    fresh_registry.add_plugin(builtin, "builtin", dist="rewardkit")
    fresh_registry.add_plugin(pytest.importorskip("rewardkit_math.plugin"), "math", dist="rewardkit-math")
    fresh_registry.add_plugin(pytest.importorskip("rewardkit_code.plugin"), "code", dist="rewardkit-code")
    return fresh_registry


@pytest.mark.parametrize("path, overrides", SHIPPED, ids=[p[len("recipes/"):] + (" + other rewards" if o else "")
                                                          for p, o in SHIPPED])
def test_every_shipped_recipe_and_reward_probes_without_a_finding(shipped_registry, path, overrides):
    """exact_match, math.accuracy / format / length_penalty and code.tests: every probe and check passes, the
    invariance checks actually compared (the fresh process included); reward_model waits for its rm stage."""
    path = os.path.join(REPO, path)
    recipe = load_recipe(path, stand_in_data(path) + overrides, registry=shipped_registry)
    if any(b.name == "code.tests" for s in recipe.stages for b in s.rewards):
        from rewardkit_code.sandbox import host_problems  # noqa: PLC0415

        if host_problems("full"):
            pytest.skip("SANDBOX UNAVAILABLE: " + "; ".join(host_problems("full")))
    reports = probe.probe_recipe(recipe, shipped_registry, rows=8)
    for rep in reports:
        if rep.name == "reward_model":
            assert "no model directory" in rep.skipped  # its model is trained by the recipe's rm stage
            continue
        assert not rep.skipped and not rep.findings, probe.format_reports([rep])
        if " in environment " in rep.reward:  # a stage's episode probes (rewardkit.probe_episodes): no contract rows
            continue
        checks = checks_of(rep)
        assert all(checks[n].detail is None for n in ("repeated call", "batch split", "batch order",
                                                      "fresh process")), probe.format_reports([rep])
        assert rep.judges == {"math.format": "format", "math.length_penalty": "length"}.get(rep.name,
                                                                                          "correctness")
    with_env = sum(len(s.rewards) for s in recipe.stages if s.environment)
    assert len(reports) == (5 if overrides else len({(s.name, b.alias) for s in recipe.stages for b in s.rewards})
                            + with_env)


def test_the_judges_only_declaration_and_the_checks_are_documented():
    from rewardkit import hookspecs  # noqa: PLC0415

    doc = hookspecs.register_rewards.__doc__
    assert f"``{hookspecs.REWARD_JUDGES_ONLY}``" in doc
    assert all(f'``"{v}"``' in doc for v in hookspecs.JUDGES_ONLY_VALUES)
    with open(os.path.join(REPO, "docs", "safety.md")) as f:
        safety = f.read()
    for name in ("judges correctness", "repeated call", "batch split", "batch order", "fresh process",
                 "shuffled golds", *(p for probes in probe.KIND_PROBES.values() for p in probes)):
        assert f"`{name}`" in safety, f"docs/safety.md does not document {name}"
