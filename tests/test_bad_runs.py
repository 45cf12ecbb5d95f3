"""Every bad run is one clean error: exit code 2, one message naming the field and the recipe file, no traceback,
found by `rewardkit validate` as by `run` (before any model loads), and nothing a previous run wrote is touched.

Each case is the quick start (a copy in tmp_path) with one override, run through the CLI's main function.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from rewardkit.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "recipes", "quickstart.yaml")


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "quickstart.yaml"
    shutil.copy(QUICKSTART, path)
    return str(path)


def refused(capsys, *argv):
    """Run the CLI; it must exit 2 with one error and no traceback. Returns its stderr."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out and "OK" not in out.out, out
    assert out.err.startswith("rewardkit: error: "), out.err
    return out.err


# override -> what the one message must say (the field, and enough to know what is wrong)
BAD_VALUES = {
    "stages.sft.early_stop.target=2.0": "stages.sft.early_stop.target: 2.0 can never be reached",
    "stages.sft.early_stop.target=1.01": "stages.sft.early_stop.target: 1.01 can never be reached",
    "stages.sft.early_stop.every=5000": "stages.sft.early_stop.every: 5000 is beyond the stage's trainer.max_steps",
    "stages.sft.early_stop.n=0": "stages.sft.early_stop.n: must be at least 1",
    "stages.sft.early_stop.min_delta=-0.1": "stages.sft.early_stop.min_delta: must be at least 0",
    "stages.sft.early_stop.split=nosuchsplit": "stages.sft.early_stop.split: the dataset has no 'nosuchsplit' split",
    "data.params.n_val=0": "stages.sft.early_stop.split: the dataset has no 'validation' split",
    "eval.samples=-3": "eval.samples: must be at least 0",
    "eval.n=0": "eval.n: must be at least 1",
    "eval.batch_size=0": "eval.batch_size: must be at least 1",
    "eval.max_new_tokens=0": "eval.max_new_tokens: must be at least 1",
    "eval.temperature=0": "eval.temperature: must be above 0",
    "eval.split=nosuchsplit": "eval.split: the dataset has no 'nosuchsplit' split (it has train, test, validation)",
    "seed=-1": "recipe.seed: must be between 0 and 2**32 - 1",
    "data.limit=0": "data.limit: must be at least 1",
    "data.test_size=-5": "data.test_size: must be a count of rows (at least 1) or a fraction between 0 and 1",
    "stages.grpo.data.test_size=1.5": "stages.grpo.data.test_size: must be a count",
    "reward_faults.max_rate=2": "reward_faults.max_rate: must be between 0 and 1",
    "monitor.window=0": "monitor.window: must be at least 1",
    "model.quantization.compute_dtype=float8": "model.quantization.compute_dtype: must be one of float32, bfloat16, float16, got 'float8'",
}


@pytest.mark.parametrize("override", list(BAD_VALUES))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_bad_value_is_one_message_naming_the_field(capsys, builtin_registry, recipe, tmp_path, command, override):
    out = tmp_path / "out"
    err = refused(capsys, command, recipe, f"output_dir={out}", override)
    assert BAD_VALUES[override] in err and recipe in err, err
    assert not out.exists()  # refused before the run made anything


def test_a_split_only_a_run_could_see_is_refused_before_a_previous_run_is_touched(tmp_path, builtin_registry):
    # A dataset whose loader does not declare its splits: validation cannot know them, so the run loads the data
    # and refuses before --fresh removes anything.
    from rewardkit.builtin.datasets import arithmetic
    from rewardkit.errors import RecipeError
    from rewardkit.pipeline import run
    from rewardkit.recipe import load_recipe

    builtin_registry.add("datasets", "undeclared", lambda **params: arithmetic(**params))
    out = tmp_path / "out"
    previous = previous_run(out)
    path = tmp_path / "r.yaml"
    path.write_text(open(QUICKSTART).read().replace("name: arithmetic", "name: undeclared"))
    loaded = load_recipe(str(path), [f"output_dir={out}", "eval.split=nosuchsplit"], registry=builtin_registry)
    with pytest.raises(RecipeError, match=r"eval.split: the dataset has no 'nosuchsplit' split"):
        run(loaded, builtin_registry, resume="never")
    assert snapshot(out) == previous


def test_validate_builds_a_dataset_that_does_not_declare_its_splits(capsys, tmp_path, builtin_registry):
    """`rewardkit validate` builds such a dataset (data only, no model) to check the splits the run reads, and
    names a loader that fails instead of showing its traceback."""
    from rewardkit.builtin.datasets import arithmetic

    def broken(**params):
        raise RuntimeError("the archive is corrupt")

    builtin_registry.add("datasets", "undeclared", lambda **params: arithmetic(**params))
    builtin_registry.add("datasets", "broken", broken)
    path = tmp_path / "r.yaml"
    path.write_text(open(QUICKSTART).read().replace("name: arithmetic", "name: undeclared"))
    out = tmp_path / "out"
    err = refused(capsys, "validate", str(path), f"output_dir={out}", "eval.split=nosuchsplit")
    assert "eval.split: the dataset has no 'nosuchsplit' split (it has train, test, validation)" in err, err
    err = refused(capsys, "validate", str(path), f"output_dir={out}", "data.params.n_val=0")
    assert "stages.sft.early_stop.split: the dataset has no 'validation' split" in err, err
    assert main(["validate", str(path), f"output_dir={out}"]) == 0
    path.write_text(open(QUICKSTART).read().replace("name: arithmetic", "name: broken"))
    err = refused(capsys, "validate", str(path), f"output_dir={out}")
    assert "data: dataset 'broken' could not be built: RuntimeError: the archive is corrupt" in err, err
    assert not out.exists()


# override of a bundled recipe -> (the field and dataset, the reason): parameters a dataset's splits declaration
# refuses, as its loader would
BAD_DATASET_PARAMS = {
    ("quickstart.yaml", "data.params.max_operand=10"):  # 100 problems: 300 test + 200 validation cannot be drawn
        ("data.params: dataset 'arithmetic'", "n_test=300 and n_val=200 leave no training problems (100 exist)"),
    ("quickstart.yaml", "data.params.ops='+^'"): ("data.params: dataset 'arithmetic'", "ops: unknown operator '^'"),
    ("quickstart.yaml", "data.params.format=upside_down"):
        ("data.params: dataset 'arithmetic'", "format: 'upside_down' is not one of plain, reversed"),
    ("cpu/tool_multiplication_grpo.yaml", "data.params.digits=1"):
        ("data.params: dataset 'tool_multiplication'", "digits: 1-digit factors make only 81 distinct problems"),
    ("cpu/tool_multiplication_grpo.yaml", "data.params.digits=12"):
        ("data.params: dataset 'tool_multiplication'", "digits: must be between 1 and 9, got 12"),
}


@pytest.mark.parametrize("case", list(BAD_DATASET_PARAMS), ids=lambda case: case[1])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_dataset_params_its_loader_would_refuse_are_found_before_it_runs(capsys, builtin_registry, tmp_path,
                                                                         command, case):
    recipe, override = case
    out = tmp_path / "out"
    err = refused(capsys, command, os.path.join(REPO, "recipes", recipe), f"output_dir={out}", override)
    field, reason = BAD_DATASET_PARAMS[case]
    assert err.count(reason) == 1 and f"{field} from " in err, err  # once, naming the field and the dataset
    assert not out.exists()


def previous_run(out):
    """What a previous run leaves in output_dir (a finished stage, an interrupted one, the summary)."""
    (out / "sft" / "model").mkdir(parents=True)
    (out / "sft" / "stage.json").write_text(json.dumps({"status": "done", "fingerprint": "0" * 16}))
    (out / "sft" / "model" / "config.json").write_text("{}")
    (out / "grpo" / "checkpoint-25").mkdir(parents=True)
    (out / "grpo" / "checkpoint-25" / "trainer_state.json").write_text("{}")
    (out / "grpo" / "log.jsonl").write_text('{"step": 25}\n')
    (out / "summary.json").write_text(json.dumps({"eval": []}))
    return snapshot(out)


def snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# overrides -> the one message: a split or column a stage reads that only a run used to find (after training)
BAD_DATA = {
    ("stages.grpo.data.rename={answer: gold}", "stages.grpo.rewards=[{name: exact_match, params: {column: gold}}]"):
        "eval.reward: reward 'exact_match' scores stage grpo's data, which lacks column(s) answer",
    ("stages.sft.data.rename={answer: gold}",):  # early_stop scores sft's own data with the eval reward
        "eval.reward: reward 'exact_match' scores stage sft's data, which lacks column(s) answer",
}


@pytest.mark.parametrize("overrides", list(BAD_DATA))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_column_a_stage_reads_is_checked_before_training(capsys, builtin_registry, recipe, tmp_path, command,
                                                           overrides):
    out = tmp_path / "out"
    err = refused(capsys, command, recipe, f"output_dir={out}", *overrides)
    assert BAD_DATA[overrides] in err, err
    assert not out.exists()


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_held_out_count_larger_than_the_file_is_refused(capsys, builtin_registry, tmp_path, command):
    rows = "".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(10))
    (tmp_path / "d.jsonl").write_text(rows)
    path = tmp_path / "r.yaml"
    path.write_text(f"output_dir: {tmp_path / 'out'}\nmodel: {{name: tiny-llama}}\n"
                    "data: {path: d.jsonl, test_size: 50}\ntrainer: {type: sft, max_steps: 1}\n")
    err = refused(capsys, command, str(path))
    assert "data.test_size: 50 rows held out of" in err and "which has 10" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", [[], ["--fresh"], ["--resume"]])
def test_a_refused_run_leaves_a_previous_run_as_it_was(capsys, builtin_registry, recipe, tmp_path, flag):
    out = tmp_path / "out"
    before = previous_run(out)
    for override in ("eval.split=nosuchsplit", "stages.sft.early_stop.target=2.0", "eval.samples=-3"):
        refused(capsys, "run", recipe, f"output_dir={out}", override, *flag)
        assert snapshot(out) == before


def test_output_dir_that_is_a_file_is_refused_and_the_file_kept(capsys, builtin_registry, recipe, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("a user's file\n")
    for argv in (["validate"], ["run"], ["run", "--fresh"], ["run", "--smoke"]):
        err = refused(capsys, argv[0], recipe, f"output_dir={afile}", *argv[1:])
        assert f"output_dir: {afile} is a file, not a directory" in err and recipe in err, err
        # a path under the file
        err = refused(capsys, argv[0], recipe, f"output_dir={afile}/run", *argv[1:])
        assert f"output_dir: {afile} is a file, not a directory" in err, err
    assert afile.read_text() == "a user's file\n"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc (unwritable even for root)")
def test_output_dir_under_an_unwritable_path_is_refused(capsys, builtin_registry, recipe):
    for command in ("validate", "run"):
        err = refused(capsys, command, recipe, "output_dir=/proc/rewardkit-test/run")
        assert "output_dir: cannot create a directory in /proc" in err and recipe in err, err


def test_paths_inside_output_dir_of_the_wrong_kind_are_refused(capsys, builtin_registry, recipe, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sft").write_text("not a stage directory")
    (out / "summary.json").mkdir()
    (out / "plots").write_text("not a directory")
    err = refused(capsys, "validate", recipe, f"output_dir={out}")
    assert f"stages.sft: {out / 'sft'} is a file; the stage writes its checkpoints" in err, err
    assert f"{out / 'summary.json'} is a directory; the run writes its summary there" in err, err
    assert f"{out / 'plots'} is not a directory; the run writes its plots into it" in err, err
    assert (out / "sft").read_text() == "not a stage directory"


@pytest.mark.parametrize("name, why", [("../escaped", "not a path"), ("a/b", "not a path"), ("..", "not a path"),
                                       ("plots", "taken in output_dir"), ("summary.json", "taken in output_dir")])
def test_a_stage_name_must_be_a_directory_name_inside_output_dir(capsys, builtin_registry, recipe, tmp_path,
                                                                 name, why):
    stages = json.dumps({name: {"trainer": {"type": "sft", "max_steps": 1}}})
    for command in ("validate", "run"):
        err = refused(capsys, command, recipe, f"output_dir={tmp_path / 'out'}", f"stages={stages}")
        assert f"stage name {name!r}: " in err and why in err, err
    assert os.listdir(tmp_path) == ["quickstart.yaml"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc (unwritable even for root)")
def test_an_unwritable_model_cache_is_refused_before_the_run(capsys, builtin_registry, recipe, tmp_path,
                                                            monkeypatch):
    monkeypatch.setenv("REWARDKIT_CACHE", "/proc/rewardkit-test")
    err = refused(capsys, "run", recipe, f"output_dir={tmp_path / 'out'}")
    assert "model.name: 'tiny-llama' is built into the model cache ($REWARDKIT_CACHE, /proc/rewardkit-test)" in err
    assert not (tmp_path / "out").exists()


def test_plot_and_new_plugin_refuse_a_file_as_their_directory(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("kept")
    assert "--out: " in refused(capsys, "plot", str(tmp_path), "--out", str(afile))
    assert "--dir: " in refused(capsys, "new-plugin", "brevity", "--dir", str(afile))
    assert afile.read_text() == "kept"


def test_the_real_command_prints_one_message_and_exits_2(tmp_path, recipe):
    afile = tmp_path / "afile"
    afile.write_text("kept")
    proc = subprocess.run([sys.executable, "-m", "rewardkit.cli", "run", recipe, f"output_dir={afile}",
                           "eval.samples=-3"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert proc.stderr.splitlines() == [f"rewardkit: error: {recipe}: 2 problems",
                                        "  - eval.samples: must be at least 0 (0: greedy only), got -3",
                                        f"  - output_dir: {afile} is a file, not a directory"]
    assert afile.read_text() == "kept"


def test_a_dataset_plugins_broken_declaration_or_bad_params_are_each_one_message(capsys, tmp_path, builtin_registry):
    """A third-party splits declaration that fails with its own bug is named, not a traceback; params the loader
    cannot take are reported once (by the section check), not again by validate building the data."""
    from rewardkit.builtin.datasets import arithmetic

    def buggy(**params):
        return arithmetic(**params)

    buggy.splits = lambda **params: {}["n_val"]  # a KeyError: the plugin's bug
    builtin_registry.add("datasets", "buggy", buggy)
    builtin_registry.add("datasets", "undeclared", lambda n_train=10, n_test=5: arithmetic(n_train, n_test))
    path = tmp_path / "r.yaml"
    out = tmp_path / "out"
    path.write_text(open(QUICKSTART).read().replace("name: arithmetic", "name: buggy"))
    err = refused(capsys, "validate", str(path), f"output_dir={out}")
    assert "data.params: dataset 'buggy' from " in err and "its splits declaration failed: KeyError" in err, err
    path.write_text(open(QUICKSTART).read().replace("name: arithmetic", "name: undeclared"))
    err = refused(capsys, "validate", str(path), f"output_dir={out}", "~stages.sft.early_stop")
    assert err.count("unexpected keyword argument") == 1, err  # the recipe's params do not fit this loader
