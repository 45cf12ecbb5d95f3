"""The rollout layer PPO and grpo_is share (rewardkit/trainers/rollout.py): the buffer's cursor and seeded
reshuffles, the prompt stream's order and resume, and PPO continuing a rollout across a resume as grpo_is does."""

import pytest
import torch

from rewardkit.trainers.rollout import PromptStream, RolloutBuffer, RolloutReuseMixin, _new_acc


class OneProcess:
    num_processes, process_index = 1, 0


def rollout(n=8):
    return {"x": torch.arange(n), "rows": list(range(n)), "scalar": torch.tensor(3.0)}


def served(buffer, n):
    return [buffer.next()["rows"] for _ in range(n)]


def test_buffer_serves_every_row_once_per_epoch_and_finishes():
    b = RolloutBuffer(minibatches=2, epochs=3, reshuffle=True, seed=0)
    assert b.needs_rollout
    torch.manual_seed(0)
    b.start(rollout(), index=1)
    epochs = [served(b, 2) for _ in range(3)]
    for mbs in epochs:
        assert sorted(mbs[0] + mbs[1]) == list(range(8)) and len(mbs[0]) == 4
    assert epochs[1] != epochs[0] and epochs[2] != epochs[1]  # reshuffled every epoch
    assert b.cursor == (2, 1) and b.finished and b.needs_rollout


def test_reshuffles_are_seeded_by_rollout_and_epoch_and_leave_the_global_rng_alone():
    def epochs(seed, index):
        b = RolloutBuffer(2, 3, reshuffle=True, seed=seed)
        torch.manual_seed(0)
        b.start(rollout(), index)
        before = torch.get_rng_state()
        out = [served(b, 2) for _ in range(3)]
        assert torch.equal(before, torch.get_rng_state())  # epochs ≥ 1 draw from their own generator
        return out

    assert epochs(0, 1) == epochs(0, 1)
    assert epochs(0, 1)[1:] != epochs(0, 2)[1:] and epochs(0, 1)[1:] != epochs(1, 1)[1:]
    assert epochs(0, 1)[0] == epochs(0, 2)[0]  # epoch 0 is TRL's own shuffle (the global RNG, reseeded here)


def test_without_reshuffle_every_epoch_replays_the_first():
    b = RolloutBuffer(2, 3, reshuffle=False, seed=0)
    b.start(rollout(), 1)
    first, second, third = (served(b, 2) for _ in range(3))
    assert first == second == third


def test_state_dict_resumes_mid_epoch():
    b = RolloutBuffer(2, 2, reshuffle=True, seed=0)
    b.start(rollout(), 5)
    served(b, 3)  # epoch 1, first minibatch served
    state = b.state_dict()
    rest = served(b, 1)
    c = RolloutBuffer(2, 2, reshuffle=True, seed=0)
    c.load_state_dict(state)
    assert served(c, 1) == rest and c.finished


def test_prompt_stream_follows_trls_sampler_and_resumes_from_its_position():
    from trl.trainer.utils import RepeatSampler

    data = list(range(10))
    s = PromptStream(data, num_generations=2, prompts_per_batch=3, seed=7)
    first = s.draw(6, OneProcess()) + s.draw(6, OneProcess())
    trl = list(RepeatSampler(data, mini_repeat_count=2, batch_size=3, repeat_count=1, shuffle=True, seed=7))
    assert first == trl[:12] and s.position == 12
    resumed = PromptStream(data, 2, 3, seed=7)
    resumed.load(6)
    assert resumed.draw(6, OneProcess()) == first[6:]
    many = PromptStream(data, 2, 3, seed=7).draw(30, OneProcess())  # cycles past the end of the dataset
    assert len(many) == 30


def test_each_process_takes_its_contiguous_share():
    class Second:
        num_processes, process_index = 2, 1

    s, t = PromptStream(list(range(10)), 2, 2, seed=0), PromptStream(list(range(10)), 2, 2, seed=0)
    assert s.draw(8, Second()) == t.draw(8, OneProcess())[4:]


@pytest.mark.slow
def test_ppo_resumed_mid_rollout_ends_where_the_uninterrupted_run_does(tmp_path):
    """PPO checkpointed in the middle of a rollout (step 3 of its 2 epochs × 2 minibatches) and resumed continues that
    rollout: same rollouts, records and weights as the run that was not interrupted (it used to generate anew)."""
    from transformers import AutoTokenizer

    from rewardkit import models
    from rewardkit.builtin.datasets import arithmetic
    from rewardkit.registry import get_registry
    from rewardkit.trainers.ppo import PPOTrainer
    from rewardkit.trainers.ppo_config import PPOConfig

    path = models.resolve("tiny-llama", get_registry())
    tok, ds = AutoTokenizer.from_pretrained(path), arithmetic(n_train=64, n_test=8)["train"]

    def digits(prompts, completions, **kwargs):
        return [sum(ch.isdigit() for ch in c) / 4 for c in completions]

    def run(out, resume=None):
        cfg = PPOConfig(output_dir=str(out), max_steps=4, learning_rate=3e-3, per_device_train_batch_size=8,
                        steps_per_generation=2, rollout_epochs=2, max_completion_length=4, report_to="none",
                        logging_steps=1, bf16=False, gradient_checkpointing=False, seed=0, disable_tqdm=True,
                        save_strategy="steps", save_steps=3, lr_scheduler_type="constant")
        t = PPOTrainer(model=path, reward_funcs=[digits], args=cfg, train_dataset=ds, processing_class=tok)
        t.train(resume_from_checkpoint=resume)
        return t

    full = run(tmp_path / "full")
    assert (tmp_path / "full" / "checkpoint-3" / "rollout_state.pt").exists()
    resumed = run(tmp_path / "resumed", str(tmp_path / "full" / "checkpoint-3"))
    assert resumed.rollouts == full.rollouts == 1 and full.rollout_history
    assert resumed.rollout_history == full.rollout_history
    p_full, p_res = full.model.state_dict(), resumed.model.state_dict()
    assert max((p_full[k] - p_res[k]).abs().max().item() for k in p_full) < 1e-5


class _Buffer:
    cursor, minibatches, epoch, index = (0, 0), 1, 0, 1


class _Measured(RolloutReuseMixin):
    """Just enough of a trainer for ``_record_minibatch`` to close an epoch (one minibatch per epoch, two epochs)."""

    def __init__(self, stop_ess: float):
        from collections import defaultdict
        from types import SimpleNamespace

        self.accelerator = OneProcess()
        self.args = SimpleNamespace(rollout_epochs=2, gradient_accumulation_steps=1, should_save=False)
        self.state = SimpleNamespace(global_step=0)
        self.buffer, self._acc, self.epoch_history = _Buffer(), _new_acc(), []
        self._metrics = {"train": defaultdict(list)}
        self.stop_ess = stop_ess

    def _ess(self, logp, old, mask) -> float:
        return self.stop_ess  # what the stop rule sees: the ESS over every process's sequences


def test_logged_ess_is_the_value_the_stop_rule_compares():
    """rollout/ess is the mean of what ``_ess`` (the early_stop_ess rule, all processes) returned, not a
    per-process ESS computed again: here that would be 1.0 (π_θ = π_old)."""
    t = _Measured(stop_ess=0.3)
    logp = torch.zeros(2, 3)
    t._record_minibatch(logp, logp.clone(), torch.zeros(2, 3, dtype=torch.bool), torch.ones(2, 3), torch.ones(2, 3))
    assert t.epoch_history[0]["ess"] == pytest.approx(0.3)
    assert t._metrics["train"]["rollout/ess"] == [pytest.approx(0.3)]
