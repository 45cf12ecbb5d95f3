"""The README's first command, as a user runs it: the quick start must learn as the README says."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_runs_end_to_end_and_sft_learns(tmp_path):
    # What the quick start reliably shows today: the whole SFT -> GRPO job runs offline and SFT learns.
    # GRPO's gain on greedy accuracy is NOT asserted: measured, it raises the sampled reward but lowers
    # greedy held-out accuracy (README, "The quick start"); the issue's +15-point target is open.
    out = tmp_path / "qs"
    proc = subprocess.run([sys.executable, "-m", "rewardkit.cli", "run", os.path.join(REPO, "recipes", "quickstart.yaml"),
                           f"output_dir={out}"], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    scores = {row["after"]: row["score"] for row in summary["eval"]}
    assert set(scores) == {"base", "sft", "grpo"} and summary["eval"][0]["n"] == 300
    assert scores["sft"] - scores["base"] >= 0.05, scores
    assert "held-out score" in proc.stdout and "model written to" in proc.stdout
    assert os.path.exists(summary["stages"][-1]["reward_curve"])
