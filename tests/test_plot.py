"""rewardkit plot RUN_DIR: reward (per component), KL, accuracy and loss curves from a run's logs."""

import json

from rewardkit.cli import main
from rewardkit.plot import series

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(root):
    """A run directory as rewardkit writes it: SFT then GRPO (two reward components, beta > 0)."""
    (root / "sft").mkdir(parents=True)
    (root / "grpo").mkdir()
    sft = [{"step": s, "loss": 3.0 / s, "mean_token_accuracy": 0.1 * s} for s in range(1, 6)]
    grpo = [{"step": s, "loss": 0.01, "reward": 0.2 * s, "rewards/correct/mean": 0.1 * s,
             "rewards/correct/std": 0.3, "rewards/format/mean": 0.5, "kl": 0.001 * s} for s in range(1, 6)]
    grpo.append({"step": 5, "train_runtime": 12.0, "train_loss": 0.01})
    for name, rows in (("sft", sft), ("grpo", grpo)):
        with open(root / name / "log.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        (root / name / "log.jsonl").open("a").write('{"step": 6, "lo')  # cut short by a kill
    (root / "summary.json").write_text(json.dumps({
        "stages": [{"name": "sft"}, {"name": "grpo"}],
        "eval": [{"after": "base", "score": 0.0}, {"after": "sft", "score": 0.2}, {"after": "grpo", "score": 0.5}]}))


def test_series_picks_each_metric_and_component(tmp_path):
    write_run(tmp_path)
    from rewardkit.plot import load_run

    stages, _ = load_run(str(tmp_path))
    assert [name for name, _ in stages] == ["sft", "grpo"]
    grpo = dict(stages)["grpo"]
    rewards = series(grpo, "reward")
    assert set(rewards) == {"reward (weighted sum)", "correct", "format"}  # no std, no train summary
    assert rewards["correct"] == ([1, 2, 3, 4, 5], [0.1, 0.2, 0.30000000000000004, 0.4, 0.5])
    assert set(series(grpo, "kl")) == {"kl"} and set(series(grpo, "loss")) == {"loss"}
    assert set(series(dict(stages)["sft"], "accuracy")) == {"mean_token_accuracy"}
    assert series(dict(stages)["sft"], "kl") == {}
    dpo = [{"step": 1, "rewards/chosen": 0.1, "rewards/rejected": -0.1, "rewards/margins": 0.2,
            "rewards/accuracies": 0.75, "loss": 0.6}]
    assert set(series(dpo, "reward")) == {"rewards/chosen", "rewards/rejected", "rewards/margins"}
    assert set(series(dpo, "accuracy")) == {"rewards/accuracies"}


def test_plot_command_writes_pngs(tmp_path, capsys):
    write_run(tmp_path)
    assert main(["plot", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for metric in ("reward", "kl", "accuracy", "loss"):
        path = tmp_path / "plots" / f"{metric}.png"
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000, metric
        assert f"{metric}" in out and str(path) in out


def test_missing_metric_is_explained_not_drawn(tmp_path, capsys):
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "p" / "loss.png").exists() and not (tmp_path / "p" / "kl.png").exists()
    assert "GRPO logs it only with beta > 0" in out


def test_not_a_run_dir_is_a_user_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no <stage>/log.jsonl" in err and "Traceback" not in err
