"""rewardkit new-plugin NAME writes a package that installs, is listed, and whose tests pass."""

import json
import os
import subprocess
import sys

import pytest

from rewardkit.cli import main


@pytest.mark.slow
def test_new_plugin_installs_is_listed_and_its_tests_pass(tmp_path, capsys):
    assert main(["new-plugin", "tone-check", "--dir", str(tmp_path)]) == 0
    pkg = tmp_path / "rewardkit-tone-check"
    assert "rewardkit-tone-check" in capsys.readouterr().out
    assert (pkg / "rewardkit_tone_check" / "rewards.py").exists() and (pkg / "tests" / "test_rewards.py").exists()

    # Install it (a real wheel build, into a private target so this environment stays as it was) ...
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(site), str(pkg)], capture_output=True, text=True,
                         timeout=300)
    assert pip.returncode == 0, pip.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    # ... and it is listed at once,
    listed = subprocess.run([sys.executable, "-m", "rewardkit.cli", "plugins", "--json"], capture_output=True,
                            text=True, env=env, timeout=120, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    [info] = [p for p in json.loads(listed.stdout)["plugins"] if p["distribution"] == "rewardkit-tone-check"]
    assert info["registered"] == {"rewards": ["tone-check.contains"],
                                  "environments": ["tone-check.scratchpad"]} and not info["error"]
    # and the tests it came with (using rewardkit.testing) pass against the installed copy.
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            f"--basetemp={tmp_path / 'inner'}", "tests"], capture_output=True, text=True,
                           env=env, timeout=300, cwd=pkg)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "5 passed" in tests.stdout


def test_bad_name_and_existing_dir_are_user_errors(tmp_path, capsys):
    assert main(["new-plugin", "Bad Name", "--dir", str(tmp_path)]) == 2
    assert "use lowercase letters" in capsys.readouterr().err
    (tmp_path / "rewardkit-dup").mkdir()
    assert main(["new-plugin", "dup", "--dir", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_rewardkit_prefix_is_not_doubled(tmp_path):
    from rewardkit.scaffold import names, render

    assert names("rewardkit-brevity") == {"name": "brevity", "module": "rewardkit_brevity",
                                          "dist": "rewardkit-brevity"}
    files = render("brevity")
    assert 'brevity = "rewardkit_brevity.plugin"' in files["pyproject.toml"]
    assert "${" not in "".join(files.values())
