"""PPO under ``accelerate launch`` with 2 CPU processes (gloo): advantage whitening and the rollout statistics
(KL, score) are over both processes' episodes, and processes may hold different numbers of scorable episodes."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.test_accelerate import free_port

DRIVER = '''
import os, sys
import torch
from transformers import AutoTokenizer

from rewardkit import models
from rewardkit.builtin.datasets import arithmetic
from rewardkit.registry import get_registry
from rewardkit.trainers.ppo import PPOTrainer
from rewardkit.trainers.ppo_config import PPOConfig

RANK = int(os.environ["RANK"])
OUT = sys.argv[1]
os.environ.setdefault("ACCELERATE_USE_CPU", "true")  # CPU processes (gloo), as rewardkit's pipeline asks for
from accelerate import PartialState

PartialState(cpu=True)


def by_rank(prompts, completions, **kwargs):
    """Rank 1's episodes score 2 more than rank 0's (so per-process whitening would differ from global), and
    rank 1 declines to judge its first episode (so the processes hold different numbers of scorable ones)."""
    scores = [2.0 * RANK + sum(ch.isdigit() for ch in c) / 4 for c in completions]
    if RANK == 1:
        scores[0] = None
    return scores


class Probe(PPOTrainer):
    probe_rollouts = 0

    def _old_values_and_kl(self, out, mask):
        result = super()._old_values_and_kl(out, mask)
        self.probe_kl = result[2]
        return result

    def _episode_scores(self, out, update):
        score, scorable = super()._episode_scores(out, update)
        self.probe_score = (score, scorable)
        return score, scorable

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        m = self._metrics["train"]
        torch.save({"advantages": out["advantages"], "mask": out["loss_mask"], "kl": self.probe_kl,
                    "score": self.probe_score[0], "scorable": self.probe_score[1],
                    "logged_kl": m["ppo/kl"][-1], "logged_score": m["ppo/score"][-1]},
                   os.path.join(OUT, f"rank{RANK}_rollout{self.probe_rollouts}.pt"))
        self.probe_rollouts += 1
        return out


path = models.resolve("tiny-llama", get_registry())
cfg = PPOConfig(output_dir=os.path.join(OUT, "run"), max_steps=2, learning_rate=1e-2, per_device_train_batch_size=4,
                steps_per_generation=1, rollout_epochs=1, max_completion_length=4, beta=0.1, kl_estimator="k1",
                report_to="none", save_strategy="no", logging_steps=1, bf16=False, seed=0, disable_tqdm=True)
trainer = Probe(model=path, reward_funcs=[by_rank], args=cfg, train_dataset=arithmetic(n_train=64, n_test=8)["train"],
                processing_class=AutoTokenizer.from_pretrained(path))
assert trainer.accelerator.num_processes == 2
trainer.train()
print("done", RANK)
'''


@pytest.mark.slow
def test_ppo_whitening_and_kl_statistics_are_global(tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accelerate, "accelerate's launcher is not installed"
    from rewardkit import models
    from rewardkit.registry import get_registry

    models.resolve("tiny-llama", get_registry())  # built here once (the pipeline builds on the main process first)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(driver), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    for rollout in (0, 1):
        r0, r1 = (torch.load(tmp_path / f"rank{r}_rollout{rollout}.pt") for r in (0, 1))
        adv = torch.cat([r0["advantages"][r0["mask"].bool()], r1["advantages"][r1["mask"].bool()]])
        assert abs(adv.mean().item()) < 1e-5 and adv.var().item() == pytest.approx(1.0, abs=1e-4)  # global
        local0 = r0["advantages"][r0["mask"].bool()].mean().item()
        local1 = r1["advantages"][r1["mask"].bool()].mean().item()
        assert local0 < -0.3 and local1 > 0.3  # per-process whitening would have centred each at 0
        assert int(r0["scorable"].sum()) == 4 and int(r1["scorable"].sum()) == 3
        seq_kl = torch.cat([r0["kl"].sum(1)[r0["scorable"]], r1["kl"].sum(1)[r1["scorable"]]])
        scores = torch.cat([r0["score"][r0["scorable"]], r1["score"][r1["scorable"]]])
        for r in (r0, r1):  # both processes log the statistics of all 7 scorable episodes
            assert r["logged_kl"] == pytest.approx(seq_kl.mean().item(), abs=1e-6)
            assert r["logged_score"] == pytest.approx(scores.mean().item(), abs=1e-6)
    assert r0["logged_kl"] != 0  # (k1: either sign) the second rollout's policy has moved, so the KL check is not vacuous
