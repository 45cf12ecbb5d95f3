import json

import pytest

from rewardkit import RecipeError
from rewardkit.data import file_columns, load_data
from rewardkit.builtin.datasets import arithmetic, arithmetic_preferences
from rewardkit.recipe import Recipe

ROWS = [{"question": f"{i}+{i}=", "answer": str(2 * i)} for i in range(10)]


def write_all_formats(tmp_path):
    import pandas as pd

    df = pd.DataFrame(ROWS)
    paths = {"jsonl": tmp_path / "d.jsonl", "json": tmp_path / "d.json", "csv": tmp_path / "d.csv",
             "parquet": tmp_path / "d.parquet"}
    paths["jsonl"].write_text("\n".join(json.dumps(r) for r in ROWS))
    paths["json"].write_text(json.dumps(ROWS))
    df.to_csv(paths["csv"], index=False)
    df.to_parquet(paths["parquet"])
    return paths


def recipe_at(tmp_path):
    return Recipe(None, str(tmp_path), str(tmp_path / "out"), 0, {}, {}, [], None, {})


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_local_files_load_and_shape(tmp_path, fmt):
    path = write_all_formats(tmp_path)[fmt]
    assert file_columns(str(path)) == ["question", "answer"]
    dd = load_data(recipe_at(tmp_path), {"path": path.name, "test_size": 3, "prompt_template": "Q: {question}",
                                         "rename": {"answer": "gold"}}, None)
    assert len(dd["train"]) == 7 and len(dd["test"]) == 3
    row = dd["train"][0]
    assert row["prompt"] == f"Q: {row['question']}"
    assert set(dd["train"].column_names) == {"question", "gold", "prompt"}


def test_chat_formatting_builds_conversations(tmp_path):
    path = write_all_formats(tmp_path)["jsonl"]
    dd = load_data(recipe_at(tmp_path), {"path": path.name, "chat": True, "system_prompt": "Be brief.",
                                         "prompt_template": "{question}", "completion_template": "{answer}"},
                   None)
    row = dd["train"][1]
    assert row["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1="}]
    assert row["completion"] == [{"role": "assistant", "content": "2"}]


def test_unreadable_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"unsupported file type '.txt'"):
        file_columns(str(tmp_path / "x.txt"))
    assert file_columns(str(bad)) == ["a"]  # the header is fine; the bad line is found when loading
    with pytest.raises(RecipeError, match=r"data.path: could not read .*bad.jsonl"):
        load_data(recipe_at(tmp_path), {"path": "bad.jsonl"}, None)


def test_arithmetic_is_seeded_and_held_out_is_disjoint():
    a, b = arithmetic(n_train=500, n_test=50, seed=1), arithmetic(n_train=500, n_test=50, seed=1)
    assert a["train"]["prompt"] == b["train"]["prompt"] and a["test"]["prompt"] == b["test"]["prompt"]
    assert not set(a["test"]["prompt"]) & set(a["train"]["prompt"])
    for p, ans in zip(a["train"]["prompt"][:50], a["train"]["answer"][:50]):
        x, y = p.rstrip("=").split("+")
        assert int(x) + int(y) == int(ans)
    assert arithmetic(n_train=10, seed=2)["test"]["prompt"] != a["test"]["prompt"]


def test_preference_pairs_are_right_vs_wrong():
    dd = arithmetic_preferences(n_train=200, n_test=20)
    for row in dd["train"]:
        x, y = row["prompt"].rstrip("=").split("+")
        assert row["chosen"] == str(int(x) + int(y)) != row["rejected"]


def test_policy_preferences_take_the_policys_own_mistakes(registry):
    from rewardkit import models
    from rewardkit.builtin.datasets import reverse_policy_preferences

    policy = models.resolve("tiny-llama", registry)  # untrained: every sample is wrong
    dd = reverse_policy_preferences(policy, samples=2, n_train=40, n_test=10)
    assert len(dd["train"]) == 40 and len(dd["test"]) == 10
    near_misses = 0
    for row in dd["train"]:
        assert row["chosen"] == row["prompt"][:-1][::-1] == row["answer"] != row["rejected"]
        near_misses += len(row["rejected"]) == 4 and sum(a != b for a, b in zip(row["rejected"], row["chosen"])) <= 2
    assert near_misses < 10  # the untrained model's samples, not synthetic one-letter near misses
    again = reverse_policy_preferences(policy, samples=2, n_train=40, n_test=10)
    assert again["train"]["rejected"] == dd["train"]["rejected"]  # seeded sampling


def test_policy_preferences_name_a_missing_policy(tmp_path, registry):
    with pytest.raises(RecipeError, match=r"rm\.data\.params: dataset 'reverse_policy_preferences': policy: no "):
        load_data(recipe_at(tmp_path), {"name": "reverse_policy_preferences",
                                         "params": {"policy": str(tmp_path / "sft" / "model")}},
                  registry, "rm.data")


def test_arithmetic_validation_split_is_disjoint_and_n_val_0_keeps_the_old_splits():
    old = arithmetic(n_train=500, n_test=30)
    assert "validation" not in old
    new = arithmetic(n_train=500, n_test=30, n_val=40)
    assert new["test"]["prompt"] == old["test"]["prompt"]
    val, test, train = (set(new[s]["prompt"]) for s in ("validation", "test", "train"))
    assert len(val) == 40 and not val & test and not val & train and not test & train


def test_reversed_format_pads_operands_and_writes_the_low_digit_first():
    dd = arithmetic(n_train=200, n_test=20, format="reversed")
    for row in dd["train"]:
        a, b = row["prompt"][:-1].split("+")
        assert len(a) == len(b) == 2 and row["prompt"].endswith("=")
        assert len(row["answer"]) == 3 and int(row["answer"][::-1]) == int(a) + int(b)
        assert row["completion"] == row["answer"]
    prefs = arithmetic_preferences(n_train=50, n_test=20, format="reversed")
    assert prefs["test"]["prompt"] == dd["test"]["prompt"]
    for row in prefs["train"]:
        assert len(row["rejected"]) == 3 and row["rejected"] != row["chosen"]
    with pytest.raises(ValueError, match="format: 'backwards' is not one of plain, reversed"):
        arithmetic(format="backwards")
