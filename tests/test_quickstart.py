"""The README's first command, as a user runs it: the quick start must learn as the README says."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_learns_as_the_readme_says(tmp_path):
    # The bar: GRPO itself raises held-out greedy accuracy >= 15 points over the SFT warm start and
    # >= 30 over the untrained base.
    out = tmp_path / "qs"
    proc = subprocess.run([sys.executable, "-m", "rewardkit.cli", "run", os.path.join(REPO, "recipes", "quickstart.yaml"),
                           f"output_dir={out}"], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    scores = {row["after"]: row["score"] for row in summary["eval"]}
    assert set(scores) == {"base", "sft", "grpo"} and summary["eval"][0]["n"] == 300
    assert scores["grpo"] - scores["sft"] >= 0.15, scores
    assert scores["grpo"] - scores["base"] >= 0.30, scores
    assert "held-out score" in proc.stdout and "model written to" in proc.stdout
    assert os.path.exists(summary["stages"][-1]["reward_curve"])
